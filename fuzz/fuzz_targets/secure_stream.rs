//! See `punch_fuzz::punch_checks::secure_stream` for the input format and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    punch_fuzz::punch_checks::secure_stream(data);
});
