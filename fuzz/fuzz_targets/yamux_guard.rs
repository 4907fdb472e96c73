//! See `punch_fuzz::yamux_guard` for the events and the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|scenario: punch_fuzz::yamux_guard::Scenario| {
    punch_fuzz::yamux_guard::run(scenario);
});
