//! Credential key rotation against concurrent writers.

use std::collections::BTreeMap;

use chrono::Utc;
use conveyor_engine::crypto::{Key, Keyring};
use conveyor_engine::store::{credentials, oauth};
use conveyor_tests::WS;
use sqlx::PgPool;

/// OAuth fields with refresh token `refresh`.
fn tokens(refresh: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("access_token".to_owned(), format!("access-{refresh}")),
        ("refresh_token".to_owned(), refresh.to_owned()),
    ])
}

/// The refresh token stored for `name`, opened with `keyring`, and the id
/// of the key that sealed it.
async fn stored(pool: &PgPool, keyring: &Keyring, name: &str) -> (String, String) {
    let row = oauth::read(pool, WS, name)
        .await
        .expect("read")
        .expect("the credential");
    let fields = credentials::open(keyring, WS, name, &row.sealed).expect("open");
    (fields["refresh_token"].clone(), row.sealed.key_id)
}

/// A rotation reads a row sealed with the old key; a worker still on that
/// key refreshes the token meanwhile (the provider rotates the refresh
/// token and revokes the old one) and saves it under the same key id. The
/// rotation must not write the old token back: fenced on the nonce it
/// read, it leaves the row alone, and the next rotation re-seals the new
/// token.
#[sqlx::test(migrator = "conveyor_engine::MIGRATOR")]
async fn a_rotation_never_writes_back_a_token_refreshed_since_it_read_the_row(pool: PgPool) {
    let old_key = Key::generate();
    let old = Keyring::new(old_key.clone(), []);
    let new = Keyring::new(Key::generate(), [old_key]);
    credentials::put(&pool, &old, WS, "crm", &tokens("r0"))
        .await
        .expect("put");

    let read = credentials::stale(&pool, &new).await.expect("stale");
    assert_eq!(read.len(), 1);

    // The refresh, as a worker with the old keyring commits it.
    let mut tx = pool.begin().await.expect("begin");
    oauth::lock(&mut tx, WS, "crm")
        .await
        .expect("lock")
        .expect("the credential");
    let fresh = tokens("r1");
    let plaintext = serde_json::to_vec(&fresh).expect("json");
    let sealed = old.seal(WS, "crm", &plaintext).expect("seal");
    let names: Vec<String> = fresh.keys().cloned().collect();
    oauth::save_tokens(&mut tx, WS, "crm", &names, &sealed, None, Utc::now())
        .await
        .expect("save");
    tx.commit().await.expect("commit");

    assert!(
        !credentials::reseal(&pool, &new, &read[0])
            .await
            .expect("reseal"),
        "the row changed since it was read"
    );
    assert_eq!(
        stored(&pool, &new, "crm").await,
        ("r1".to_owned(), old.current_id())
    );

    assert_eq!(credentials::rotate(&pool, &new).await.expect("rotate"), 1);
    assert_eq!(
        stored(&pool, &new, "crm").await,
        ("r1".to_owned(), new.current_id())
    );
}
