//! See `punch_fuzz::registry` for the events and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|scenario: punch_fuzz::registry::Scenario| {
    punch_fuzz::registry::run(scenario);
});
