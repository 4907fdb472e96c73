//! See `punch_fuzz::alias_table` for the events and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|scenario: punch_fuzz::alias_table::Scenario| {
    punch_fuzz::alias_table::run(scenario);
});
