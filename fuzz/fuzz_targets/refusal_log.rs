//! See `punch_fuzz::refusal_log` for the events and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|scenario: punch_fuzz::refusal_log::Scenario| {
    punch_fuzz::refusal_log::run(scenario);
});
