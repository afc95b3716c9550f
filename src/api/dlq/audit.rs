//! The DLQ audit trail: a mutation reserves its row before it acts (503
//! when the buffer is full, nothing done), writes it with what happened, or
//! gives the place back when it did not run.

use std::sync::Arc;

use super::AppError;
use super::AppState;
use crate::store::{AuditRow, AuditSlot, Store};

/// The store, for the audit trail.
pub fn store(state: &AppState) -> Result<&Arc<Store>, AppError> {
    state.store.as_ref().ok_or_else(|| AppError::Unavailable {
        message: "the history store, which keeps the DLQ audit trail, is disabled".into(),
        detail: "store disabled".into(),
    })
}

/// Reserves the audit row of a mutation about to run.
pub fn reserve(state: &AppState) -> Result<AuditSlot, AppError> {
    store(state)?.reserve_audit().map_err(|e| AppError::Unavailable {
        message: "the audit trail cannot take another row until the history store is reachable; nothing was changed"
            .into(),
        detail: e.to_string(),
    })
}

/// Writes the audit row of a mutation that ran.
pub fn audit(state: &AppState, slot: AuditSlot, row: AuditRow) {
    if let Some(store) = &state.store {
        store.audit(slot, row);
    }
}

/// Runs `act` with its audit row reserved first; the row is written with
/// what `describe` says of the result, and given back on an error.
pub async fn audited<T, F, Fut>(state: &AppState, describe: impl FnOnce(&T) -> AuditRow, act: F) -> Result<T, AppError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, AppError>>,
{
    let slot = reserve(state)?;
    match act().await {
        Ok(v) => {
            audit(state, slot, describe(&v));
            Ok(v)
        }
        // The slot gives its place back when dropped here.
        Err(e) => Err(e),
    }
}
