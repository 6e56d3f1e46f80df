//! `keel build`'s manifest parser on arbitrary text. Besides never panicking, a manifest it
//! accepts must mean the same thing on the device: every container's generated config.json
//! is read back by PID 1's annotation parser without a warning, so nothing the build
//! accepted is silently replaced by a default at boot.
#![no_main]

use std::path::Path;

use keel::init::cmdline::Options;
use keel::init::containers::settings_from;
use keel::manifest::parse;
use keel::spec::{generate, ImageDefaults, Section};
use keel::supervisor::Kind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let m = match parse(text, "fuzz.yml") {
        Ok(m) => m,
        Err(e) => {
            assert!(e.to_string().starts_with("fuzz.yml: "), "{e}");
            return;
        }
    };
    let sections = [
        (Section::Onboot, Kind::Onboot, &m.onboot),
        (Section::Service, Kind::Service, &m.services),
        (Section::Onshutdown, Kind::Onshutdown, &m.onshutdown),
    ];
    let image = ImageDefaults {
        cmd: vec!["/bin/true".into()],
        ..ImageDefaults::default()
    };
    for (section, kind, list) in sections {
        for c in list {
            let Ok(config) = generate(c, section, &image) else {
                continue;
            };
            let json = serde_json::to_vec(&config).expect("a generated config serialises");
            let mut warnings = Vec::new();
            let opts = Options::default();
            settings_from(
                Path::new("config.json"),
                Some(&json),
                &c.name,
                kind,
                &opts,
                &mut warnings,
            );
            // PID 1 does not read org.keel.seccomp as a setting yet, and warns about it.
            warnings.retain(|w| !w.contains("org.keel.seccomp"));
            assert!(
                warnings.is_empty(),
                "{}: the device would say {warnings:?}",
                c.name
            );
        }
    }
});
