//! See `punch_fuzz::relay_table` for the events and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|scenario: punch_fuzz::relay_table::Scenario| {
    punch_fuzz::relay_table::run(scenario);
});
