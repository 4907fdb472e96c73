//! See `punch_fuzz::proto_checks::noise_transport` for the input format and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    punch_fuzz::proto_checks::noise_transport(data);
});
