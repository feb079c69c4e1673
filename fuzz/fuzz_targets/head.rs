//! The front door's header check, against Pingora's own reader: whatever `head::check`
//! accepts, Pingora must accept too (else a client would get Pingora's bare 400 instead
//! of our JSON), and `check` itself never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pingora::protocols::http::v1::server::HttpSession;
use switchyard::proxy::head::{check, Head};

fuzz_target!(|data: &[u8]| {
    let Ok(Head::Complete(n)) = check(data) else {
        return;
    };
    assert!(n <= data.len());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let io = std::io::Cursor::new(data.to_vec());
    let mut session = HttpSession::new(Box::new(io));
    let read = rt.block_on(session.read_request());
    assert!(
        matches!(read, Ok(Some(_))),
        "accepted by check, refused by Pingora: {read:?} for {:?}",
        String::from_utf8_lossy(data)
    );
});
