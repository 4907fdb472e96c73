//! See `punch_fuzz::throttle` for the events and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|scenario: punch_fuzz::throttle::Scenario| {
    punch_fuzz::throttle::run(scenario);
});
