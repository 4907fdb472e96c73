//! See `punch_fuzz::attempt` for the events and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|scenario: punch_fuzz::attempt::Scenario| {
    punch_fuzz::attempt::run(scenario);
});
