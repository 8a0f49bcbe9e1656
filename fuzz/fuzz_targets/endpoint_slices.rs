//! EndpointSlices as a (hostile) Kubernetes API server may send them: whatever parses as JSON
//! slices, `discovery::endpoints::ready` must turn into a bounded list of real addresses without
//! panicking.
#![no_main]

use k8s_openapi::api::discovery::v1::EndpointSlice;
use libfuzzer_sys::fuzz_target;
use pgsluice::discovery::endpoints::{ready, MAX_ENDPOINTS};

fuzz_target!(|data: &[u8]| {
    let Ok(slices) = serde_json::from_slice::<Vec<EndpointSlice>>(data) else {
        return;
    };
    let port = data.first().map_or(5432, |b| u16::from(*b));
    let got = ready(&slices, port);
    assert!(got.len() <= MAX_ENDPOINTS);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");
    assert!(got.iter().all(|a| !a.ip().is_unspecified()));
});
