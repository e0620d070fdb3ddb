//! What one render used of its fuel, read from the engine's own meter each
//! time the render emits a value, and the value a typed evaluation emits.
//!
//! Templates are only `<<...>>` placeholders and text (block tags are
//! refused), so every expression's work ends in an emitted value: the fuel
//! used at the last emission is the render's, up to its trailing text.
//! Renders run on one thread from start to finish; the state is per thread.

use std::cell::{Cell, RefCell};

use minijinja::{State, Value};

thread_local! {
    static USED: Cell<u64> = const { Cell::new(0) };
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    static CAPTURED: RefCell<Option<Value>> = const { RefCell::new(None) };
}

/// Starts metering a render on this thread; with `capture`, the emitted
/// value is kept instead of written.
pub(super) fn start(capture: bool) {
    USED.set(0);
    CAPTURING.set(capture);
    CAPTURED.set(None);
}

/// Ends the render: the fuel it used, and the value it emitted when
/// capturing.
pub(super) fn finish() -> (u64, Option<Value>) {
    CAPTURING.set(false);
    (USED.take(), CAPTURED.take())
}

/// Called by the formatter for every emitted value: records the fuel used
/// so far, and when capturing keeps the value; `true` means nothing is to
/// be written.
pub(super) fn emitted(state: &State, value: &Value) -> bool {
    if let Some((used, _)) = state.fuel_levels() {
        USED.set(used);
    }
    if CAPTURING.get() {
        CAPTURED.set(Some(value.clone()));
        return true;
    }
    false
}
