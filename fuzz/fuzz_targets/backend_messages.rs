#![no_main]
//! The backend message bodies the pooler inspects: ParameterStatus, ReadyForQuery, ErrorResponse,
//! Authentication and BackendKeyData.
use libfuzzer_sys::fuzz_target;
use pgsluice::proto::backend;

fuzz_target!(|data: &[u8]| {
    let _ = backend::parameter_status(data);
    let _ = backend::ready_for_query(data);
    let _ = backend::backend_key_data(data);
    if let Ok(r) = backend::authentication(data) {
        let _ = r.mechanisms().count();
    }
    if let Ok(f) = backend::error_fields(data) {
        let _ = f.is_fatal();
    }
});
