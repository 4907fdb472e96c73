//! See `punch_fuzz::rate_table` for the events and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|scenario: punch_fuzz::rate_table::Scenario| {
    punch_fuzz::rate_table::run(scenario);
});
