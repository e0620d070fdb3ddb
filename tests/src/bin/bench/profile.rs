//! The database profile of one throughput run: per execution, the
//! statements (`pg_stat_statements`, when the cluster preloads it), the
//! commits, the WAL bytes and what they are made of (`pg_walinspect`, when
//! the server ships it), the row writes per table and the index entries
//! written to each index; the wait events of the active backends, sampled
//! every 10 ms; and the CPU time of PostgreSQL, the workers and the bench
//! process (its stub included).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::{BenchResult, Env, enqueue_many, load_average, reset, round2, spawn_workers};

/// The tables an execution writes.
const TABLES: [&str; 4] = [
    "connector_executions",
    "execution_steps",
    "execution_events",
    "flow_rate_limits",
];

/// Clock ticks per second of `/proc/*/stat` times (`USER_HZ`, 100 on
/// Linux).
pub(super) const TICKS_PER_S: f64 = 100.0;

/// Runs `n` executions of `conn` (a `steps`-step connector, `label`
/// naming what else it does, if anything) on `procs` worker processes,
/// exporting their traces to `otlp` when given, and reports what the
/// database and the workers did for them.
pub(super) async fn run(
    pool: &PgPool,
    env: &Env,
    (conn, label): ((Uuid, i32), Option<&str>),
    steps: usize,
    (n, procs): (usize, usize),
    otlp: Option<&str>,
) -> BenchResult<Value> {
    reset(pool).await?;
    let statements = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(pool)
        .await
        .is_ok();
    let walinspect = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        .execute(pool)
        .await
        .is_ok();
    let before_enqueue = wal_lsn(pool).await?;
    enqueue_many(pool, conn, n).await?;
    let enqueue_wal = wal_since(pool, &before_enqueue).await? / n as f64;
    let enqueued = flushed_lsn(pool).await?;

    let mut sampler = pool.acquire().await?;
    let postmaster: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *sampler)
        .await?;
    let postmaster = parent_of(u32::try_from(postmaster)?).ok_or("no postmaster pid")?;
    sqlx::query("SELECT pg_stat_reset()")
        .execute(&mut *sampler)
        .await?;
    if statements {
        sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&mut *sampler)
            .await?;
    }
    let commits_before = commits(pool).await?;
    let before = wal_lsn(pool).await?;
    let pg_cpu_before = postgres_ticks(postmaster);
    let own_cpu_before = cpu_ticks(|pid, _| pid == std::process::id());

    let stop = Arc::new(AtomicBool::new(false));
    let waits = tokio::spawn(sample_waits(sampler, stop.clone()));
    let workers = spawn_workers(env, procs, otlp)?;
    let started = Instant::now();
    let polls = super::wait_finished(pool, n).await?;
    let wall = started.elapsed().as_secs_f64();
    let worker_pids: Vec<u32> = workers.0.iter().map(std::process::Child::id).collect();
    let worker_cpu = cpu_ticks(|pid, _| worker_pids.contains(&pid));
    let pg_cpu = postgres_ticks(postmaster).saturating_sub(pg_cpu_before);
    let own_cpu = cpu_ticks(|pid, _| pid == std::process::id()) - own_cpu_before;
    let wal = wal_since(pool, &before).await? / n as f64;
    let after = flushed_lsn(pool).await?;
    stop.store(true, Ordering::Relaxed);
    let (samples, waits) = waits.await??;
    // Backends flush their table counters within a second of going idle;
    // the workers stay up meanwhile so that theirs are counted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(workers);
    let rate = super::measured_rate(pool, n).await?;
    // The bench's own polls and samples are transactions too.
    let own_xacts = polls + samples + 4;
    let commits =
        (commits(pool).await? - commits_before).saturating_sub(own_xacts) as f64 / n as f64;
    let (wal_kinds, enqueue_kinds) = if walinspect {
        (
            wal_breakdown(pool, (&before, &after), n).await,
            wal_breakdown(pool, (&before_enqueue, &enqueued), n).await,
        )
    } else {
        (None, None)
    };
    let tables = table_writes(pool, n, wal_kinds.as_ref()).await?;
    let top = if statements {
        top_statements(pool, n).await?
    } else {
        Vec::new()
    };
    let statements_per_execution: Option<f64> = statements.then(|| {
        top.iter()
            .filter_map(|s| s.get("per_execution").and_then(Value::as_f64))
            .sum()
    });
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let share = |ticks: u64| round2(ticks as f64 / TICKS_PER_S / (wall * cores));
    let micros = |ticks: u64| (ticks as f64 / TICKS_PER_S * 1e6 / n as f64).round();
    let wait_total = waits.values().sum::<u64>().max(1) as f64;
    let mut wait_list: Vec<(String, u64)> = waits.into_iter().collect();
    wait_list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let wait_json: serde_json::Map<String, Value> = wait_list
        .iter()
        .take(10)
        .map(|(k, v)| (k.clone(), json!(round2(*v as f64 / wait_total))))
        .collect();

    println!(
        "profile, {steps}-step{}, {procs} processes, {n} executions: {rate:.0} executions/s (load average {})",
        label.map_or(String::new(), |l| format!(" ({l})")),
        load_average()
    );
    println!(
        "  per execution: {} statements, {commits:.2} commits, {wal:.0} WAL bytes (enqueue: {enqueue_wal:.0} more)",
        statements_per_execution.map_or("unknown".to_owned(), |s| format!("{s:.2}"))
    );
    println!(
        "  CPU share of {cores} cores: PostgreSQL {}, workers {}, bench and stub {}; CPU µs per execution: PostgreSQL {}, workers {}",
        share(pg_cpu),
        share(worker_cpu),
        share(own_cpu),
        micros(pg_cpu),
        micros(worker_cpu)
    );
    println!("  writes per execution: {tables}");
    if let Some(w) = &wal_kinds {
        println!(
            "  WAL per execution by record type: {}; by table: {}; full-page images {} bytes",
            w.records, w.by_table, w.fpi_bytes
        );
    }
    println!("  active backends by wait event ({samples} samples): {wait_json:?}");
    for s in &top {
        println!("  {s}");
    }
    Ok(json!({
        "steps": steps,
        "label": label,
        "processes": procs,
        "executions": n,
        "executions_per_s": rate.round(),
        "statements_per_execution": statements_per_execution.map(round2),
        "commits_per_execution": round2(commits),
        "wal_bytes_per_execution": wal.round(),
        "enqueue_wal_bytes_per_execution": enqueue_wal.round(),
        "cpu_share": {"postgres": share(pg_cpu), "workers": share(worker_cpu), "bench": share(own_cpu)},
        "cpu_us_per_execution": {"postgres": micros(pg_cpu), "workers": micros(worker_cpu)},
        "writes_per_execution": tables,
        "wal_records_per_execution": wal_kinds.as_ref().map(|w| &w.records),
        "wal_bytes_by_table_per_execution": wal_kinds.as_ref().map(|w| &w.by_table),
        "wal_fpi_bytes_per_execution": wal_kinds.as_ref().map(|w| w.fpi_bytes),
        "enqueue_index_entries_per_execution": enqueue_kinds.as_ref().map(|w| &w.entries),
        "wait_events": wait_json,
        "top_statements": top,
        "load_average": load_average(),
    }))
}

async fn wal_lsn(pool: &PgPool) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await
}

async fn wal_since(pool: &PgPool, lsn: &str) -> Result<f64, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8")
        .bind(lsn)
        .fetch_one(pool)
        .await
}

/// The WAL position written to disk: `pg_walinspect` reads no further.
async fn flushed_lsn(pool: &PgPool) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_current_wal_flush_lsn()::text")
        .fetch_one(pool)
        .await
}

/// What a stretch of WAL is made of, per execution.
struct WalBreakdown {
    /// Per record type (`Heap/HOT_UPDATE`, `Btree/INSERT_LEAF`...) written
    /// at least once per 100 executions, the records and their bytes
    /// (full-page images included), most bytes first.
    records: Value,
    /// The bytes written for each table of this database, its indexes
    /// (and its visibility and free-space maps) included, most first.
    by_table: Value,
    /// The bytes of full-page images among them.
    fpi_bytes: f64,
    /// Per table of this database, the B-tree entries written to each of
    /// its indexes.
    entries: BTreeMap<String, BTreeMap<String, f64>>,
}

impl WalBreakdown {
    /// `table`'s index entries: their total and each index's.
    fn entries_of(&self, table: &str) -> Value {
        let by_index = self.entries.get(table).cloned().unwrap_or_default();
        // Folded from 0: an empty `sum` of floats is -0.
        let total = by_index.values().fold(0.0, |sum, v| sum + v);
        json!({"total": round2(total), "by_index": by_index})
    }
}

/// One group of WAL records: a record type and, for index entries, the
/// index and its table.
#[derive(sqlx::FromRow)]
struct WalRow {
    kind: String,
    index: Option<String>,
    table: Option<String>,
    records: i64,
    bytes: i64,
    fpi: i64,
}

/// The WAL from `from` to `to` (flushed positions), read back with
/// `pg_walinspect`: its records by type (another database's left out),
/// its bytes by table of this database, and the index entries each of
/// its indexes got. An entry is a leaf insertion: `INSERT_LEAF`,
/// `INSERT_POST` (into a deduplicated posting list), or a leaf page split
/// (the split record carries the entry that caused it). Counted from the
/// log rather than inferred, because an insert or a non-HOT update adds
/// an entry only to the indexes whose predicate the new row satisfies.
/// `None` (and a note) when the WAL can no longer be read, as when a
/// checkpoint recycled its first segments during a long run.
async fn wal_breakdown(pool: &PgPool, (from, to): (&str, &str), n: usize) -> Option<WalBreakdown> {
    let rows: Result<Vec<WalRow>, _> = sqlx::query_as(
        r"WITH rec AS (
              SELECT resource_manager || '/' || record_type AS kind, record_length, fpi_length,
                     resource_manager = 'Btree'
                     AND (record_type IN ('INSERT_LEAF', 'INSERT_POST')
                          OR (record_type IN ('SPLIT_L', 'SPLIT_R') AND description ~ '^level:? 0,'))
                       AS entry,
                     substring(block_ref FROM 'rel \d+/(\d+)/')::oid AS db,
                     substring(block_ref FROM 'rel \d+/\d+/(\d+)')::oid AS filenode
              FROM pg_get_wal_records_info($1::pg_lsn, $2::pg_lsn)
          ), here AS (
              -- This database's records, the shared catalogs' (database
              -- 0) and those of no relation (commits): not another
              -- database's.
              SELECT rec.*, rec.db = d.oid AS ours FROM rec, pg_database d
              WHERE d.datname = current_database() AND (rec.db IS NULL OR rec.db IN (0, d.oid))
          )
          SELECT rec.kind, CASE WHEN rec.entry AND c.relkind = 'i' THEN c.relname::text END AS index,
                 COALESCE(t.relname, c.relname)::text AS table,
                 count(*) AS records, sum(rec.record_length)::int8 AS bytes,
                 sum(rec.fpi_length)::int8 AS fpi
          FROM here rec
          LEFT JOIN pg_class c ON c.relfilenode = rec.filenode AND rec.ours
          LEFT JOIN pg_index x ON x.indexrelid = c.oid
          LEFT JOIN pg_class t ON t.oid = x.indrelid
          GROUP BY 1, 2, 3",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            println!("  (the run's WAL could not be read back: {e})");
            return None;
        }
    };
    let per = |v: i64| v as f64 / n as f64;
    let (mut kinds, mut tables) = (HashMap::new(), HashMap::new());
    let mut entries: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    let mut fpi = 0;
    for row in rows {
        fpi += row.fpi;
        add(&mut kinds, row.kind, (row.records, row.bytes));
        if let Some(table) = row.table {
            if let Some(index) = row.index {
                *entries
                    .entry(table.clone())
                    .or_default()
                    .entry(index)
                    .or_default() += row.records;
            }
            add(&mut tables, table, (row.records, row.bytes));
        }
    }
    let records = most_bytes_first(kinds)
        .into_iter()
        .filter(|(_, count, _)| per(*count) >= 0.01)
        .map(|(kind, count, bytes)| {
            json!({"kind": kind, "records": round2(per(count)), "bytes": per(bytes).round()})
        })
        .collect::<Vec<_>>();
    let by_table = most_bytes_first(tables)
        .into_iter()
        .filter(|(_, _, bytes)| per(*bytes) >= 1.0)
        .map(|(table, _, bytes)| json!({"table": table, "bytes": per(bytes).round()}))
        .collect::<Vec<_>>();
    Some(WalBreakdown {
        records: records.into(),
        by_table: by_table.into(),
        fpi_bytes: per(fpi).round(),
        entries: entries
            .into_iter()
            .map(|(table, by_index)| {
                let by_index = by_index.into_iter().map(|(i, c)| (i, round2(per(c))));
                (table, by_index.collect())
            })
            .collect(),
    })
}

/// Adds `records` and `bytes` to `key`'s totals.
fn add(totals: &mut HashMap<String, (i64, i64)>, key: String, (records, bytes): (i64, i64)) {
    let total = totals.entry(key).or_default();
    total.0 += records;
    total.1 += bytes;
}

/// `totals` as (key, records, bytes), most bytes first, then by key.
fn most_bytes_first(totals: HashMap<String, (i64, i64)>) -> Vec<(String, i64, i64)> {
    let mut list: Vec<(String, i64, i64)> =
        totals.into_iter().map(|(k, (r, b))| (k, r, b)).collect();
    list.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    list
}

async fn commits(pool: &PgPool) -> Result<u64, sqlx::Error> {
    // The snapshot of the cumulative statistics is per transaction: a
    // fresh one each call.
    let n: i64 = sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Inserts, updates (HOT and not) and deletes per execution of each table,
/// with the table's index count and, when the WAL was read back, the index
/// entries written (`index_writes`, from `wal`).
async fn table_writes(
    pool: &PgPool,
    n: usize,
    wal: Option<&WalBreakdown>,
) -> Result<Value, sqlx::Error> {
    let rows: Vec<(String, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT s.relname::text, s.n_tup_ins, s.n_tup_upd, s.n_tup_hot_upd, s.n_tup_del,
                (SELECT count(*) FROM pg_index i WHERE i.indrelid = s.relid)
         FROM pg_stat_user_tables s WHERE s.relname = ANY($1) ORDER BY s.relname",
    )
    .bind(&TABLES[..])
    .fetch_all(pool)
    .await?;
    let per = |v: i64| round2(v as f64 / n as f64);
    Ok(rows
        .into_iter()
        .filter(|r| r.1 + r.2 + r.4 > 0)
        .map(|(name, ins, upd, hot, del, indexes)| {
            let entries = wal.map(|w| w.entries_of(&name));
            (
                name,
                json!({
                    "inserts": per(ins),
                    "updates": per(upd),
                    "hot_updates": per(hot),
                    "deletes": per(del),
                    "indexes": indexes,
                    "index_writes": entries.as_ref().map(|e| e["total"].clone()),
                    "index_writes_by_index": entries.map(|e| e["by_index"].clone()),
                }),
            )
        })
        .collect::<serde_json::Map<String, Value>>()
        .into())
}

/// The statements run per execution, most frequent first, leaving out the
/// bench's own monitoring queries.
async fn top_statements(pool: &PgPool, n: usize) -> Result<Vec<Value>, sqlx::Error> {
    let rows: Vec<(i64, f64, i64, f64, String)> = sqlx::query_as(
        "SELECT s.calls, s.mean_exec_time, s.rows,
                s.jit_generation_time + s.jit_inlining_time + s.jit_optimization_time + s.jit_emission_time,
                regexp_replace(s.query, '\\s+', ' ', 'g')
         FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
         WHERE d.datname = current_database()
           AND s.query NOT LIKE '%pg_stat%' AND s.query NOT LIKE '%pg_current_wal_lsn%'
           AND s.query NOT LIKE 'SELECT count(*) FROM connector_executions WHERE status IN%'
           AND s.query NOT LIKE 'SELECT count(*) FILTER%'
           AND s.query NOT LIKE 'SELECT EXISTS (SELECT $1 FROM connector_executions%'
         ORDER BY s.calls DESC",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter(|r| r.0 as f64 / n as f64 >= 0.01)
        .map(|(calls, mean, rows, jit, query)| {
            json!({
                "per_execution": round2(calls as f64 / n as f64),
                "mean_ms": (mean * 1000.0).round() / 1000.0,
                // JIT compilation, part of the execution time above.
                "jit_ms_per_call": (jit / calls.max(1) as f64 * 1000.0).round() / 1000.0,
                "rows_per_call": round2(rows as f64 / calls.max(1) as f64),
                "query": query.chars().take(100).collect::<String>(),
            })
        })
        .collect())
}

/// Samples the wait events of the database's active backends (and those
/// idle inside a transaction, which wait for their client) every 10 ms
/// until `stop`; returns the sample count and the tally. An active backend
/// without a wait event is on a CPU or waiting for one.
async fn sample_waits(
    mut conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
    stop: Arc<AtomicBool>,
) -> Result<(u64, HashMap<String, u64>), sqlx::Error> {
    let mut tally = HashMap::new();
    let mut samples = 0;
    while !stop.load(Ordering::Relaxed) {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state || ': ' || COALESCE(wait_event_type || '/' || wait_event, 'CPU'), count(*)
             FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND state IN ('active', 'idle in transaction')
             GROUP BY 1",
        )
        .fetch_all(&mut *conn)
        .await?;
        samples += 1;
        for (k, v) in rows {
            *tally.entry(k).or_insert(0) += u64::try_from(v).unwrap_or(0);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((samples, tally))
}

/// The parent of process `pid`.
pub(super) fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid).map(|s| s.ppid)
}

/// What `/proc/<pid>/stat` says of a process.
struct Stat {
    ppid: u32,
    /// Its own CPU ticks (`utime + stime`).
    own: u64,
    /// The CPU ticks of its children that exited and were waited for
    /// (`cutime + cstime`).
    reaped: u64,
}

/// `pid`'s [`Stat`].
fn stat_fields(pid: u32) -> Option<Stat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it do not.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(Stat {
        ppid: fields.get(1)?.parse().ok()?,
        own: tick(11)? + tick(12)?,
        reaped: tick(13)? + tick(14)?,
    })
}

/// CPU ticks used so far by the live processes `keep(pid, ppid)` selects.
pub(super) fn cpu_ticks(keep: impl Fn(u32, u32) -> bool) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| stat_fields(pid).map(|s| (pid, s)))
        .filter(|(pid, s)| keep(*pid, s.ppid))
        .map(|(_, s)| s.own)
        .sum()
}

/// CPU ticks PostgreSQL has used so far: the postmaster, its live
/// children, and those that exited (the backend of a connection closed
/// meanwhile), which the postmaster counts once it has waited for them.
/// Without the last, a load during which a process disconnected (the
/// worker stopping) read as less than no time at all.
pub(super) fn postgres_ticks(postmaster: u32) -> u64 {
    cpu_ticks(|pid, ppid| pid == postmaster || ppid == postmaster)
        + stat_fields(postmaster).map_or(0, |s| s.reaped)
}

#[cfg(test)]
mod tests {
    use sqlx::Connection as _;

    use super::*;

    /// Runs `statements` one after the other on `conn`. The tests begin
    /// with `SET synchronous_commit = on` (the test cluster has it off),
    /// so that the flushed WAL position covers every commit.
    async fn run(conn: &mut sqlx::PgConnection, statements: &[&str]) -> BenchResult<()> {
        for s in statements {
            sqlx::query(sqlx::AssertSqlSafe(*s))
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Entries are counted per index from the WAL: a row version gets one
    /// in a partial index only when it satisfies the predicate, and an
    /// update that changes no indexed column (HOT) writes none at all;
    /// another database's records are left out.
    #[sqlx::test]
    async fn the_wal_shows_the_entries_each_index_got(pool: PgPool) -> BenchResult<()> {
        let mut conn = pool.acquire().await?;
        run(
            &mut conn,
            &[
                "SET synchronous_commit = on",
                "CREATE EXTENSION IF NOT EXISTS pg_walinspect",
                "CREATE TABLE t (id int PRIMARY KEY, state text NOT NULL, note text NOT NULL)
                 WITH (fillfactor = 50)",
                "CREATE INDEX t_queued ON t (id) WHERE state = 'queued'",
            ],
        )
        .await?;
        // Another database of the cluster, writing HOT updates of its own
        // in the same stretch of WAL.
        let other_db = format!("wal_other_{}", Uuid::new_v4().simple());
        run(&mut conn, &[&format!("CREATE DATABASE {other_db}")]).await?;
        let mut other = sqlx::PgConnection::connect_with(
            &pool.connect_options().as_ref().clone().database(&other_db),
        )
        .await?;
        run(
            &mut other,
            &[
                "SET synchronous_commit = on",
                "CREATE TABLE o (id int PRIMARY KEY, note text NOT NULL) WITH (fillfactor = 50)",
                "INSERT INTO o SELECT g, '' FROM generate_series(1, 10) g",
            ],
        )
        .await?;
        let from = flushed_lsn(&pool).await?;
        run(&mut other, &["UPDATE o SET note = 'x'"]).await?;
        run(
            &mut conn,
            &[
                // 100 rows, 30 of them queued.
                "INSERT INTO t SELECT g, CASE WHEN g <= 30 THEN 'queued' ELSE 'done' END, ''
                 FROM generate_series(1, 100) g",
                // HOT: no indexed column, no predicate's column changes.
                "UPDATE t SET note = 'x' WHERE id <= 10",
                // Not HOT: 10 new versions, all of them queued.
                "UPDATE t SET state = 'queued' WHERE id > 90",
            ],
        )
        .await?;
        let to = flushed_lsn(&pool).await?;
        other.close().await?;
        run(&mut conn, &[&format!("DROP DATABASE {other_db}")]).await?;
        let wal = wal_breakdown(&pool, (&from, &to), 10)
            .await
            .expect("the WAL is read back");
        let t = wal.entries_of("t");
        assert_eq!(t["by_index"]["t_pkey"], json!(11.0), "{t}");
        assert_eq!(t["by_index"]["t_queued"], json!(4.0), "{t}");
        assert_eq!(t["total"], json!(15.0), "{t}");
        let records = wal.records.as_array().expect("records");
        let hot = records
            .iter()
            .find(|r| r["kind"] == "Heap/HOT_UPDATE")
            .expect("the HOT updates are in the WAL");
        assert_eq!(
            hot["records"],
            json!(1.0),
            "this database's 10, not the other's"
        );
        let tables = wal.by_table.as_array().expect("tables");
        assert!(
            tables
                .iter()
                .any(|r| r["table"] == "t" && r["bytes"].as_f64().is_some_and(|b| b > 0.0)),
            "{tables:?}"
        );
        Ok(())
    }
}
