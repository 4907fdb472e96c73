//! See `punch_fuzz::gate` for the events and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|scenario: punch_fuzz::gate::Scenario| {
    punch_fuzz::gate::run(scenario);
});
