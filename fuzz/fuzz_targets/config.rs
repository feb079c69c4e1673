//! Policy loading (YAML, variable expansion, validation, compilation) on arbitrary text:
//! an error naming a field, or a policy; never a panic, and an error never echoes the
//! secret the environment holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::config::expand::Env;

struct FixedEnv;

const SECRET: &str = "sk-fuzz-Qw3rTy5Ui7Op9As1Df";

impl Env for FixedEnv {
    fn var(&self, name: &str) -> Option<String> {
        (name == "KEY").then(|| SECRET.to_string())
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = switchyard::config::from_str(text, &FixedEnv, 1) {
        let shown = e.to_string();
        assert!(!shown.contains(SECRET), "{shown}");
    }
});
