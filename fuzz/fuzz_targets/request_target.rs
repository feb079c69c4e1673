//! The absolute-form / origin-form request target parser: never panics, never yields a
//! host carrying userinfo, and always yields an origin-form path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pingora::http::RequestHeader;
use switchyard::proxy::accept::{path_only, target};

fuzz_target!(|data: &[u8]| {
    let Ok(req) = RequestHeader::build("POST", data, None) else {
        return;
    };
    if let Ok(t) = target(&req) {
        if let Some(host) = t.host {
            assert!(!host.is_empty() && !host.contains('@'), "{host:?}");
        }
        assert!(t.path_and_query.starts_with('/'), "{:?}", t.path_and_query);
        let _ = path_only(t.path_and_query);
    }
});
