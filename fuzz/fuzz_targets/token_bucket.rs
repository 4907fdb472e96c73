//! See `punch_fuzz::token_bucket` for the events and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|scenario: punch_fuzz::token_bucket::Scenario| {
    punch_fuzz::token_bucket::run(scenario);
});
