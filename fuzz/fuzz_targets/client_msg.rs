//! See `punch_fuzz::proto_checks::client_msg` for the input format and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    punch_fuzz::proto_checks::client_msg(data);
});
