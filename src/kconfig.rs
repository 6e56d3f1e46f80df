//! `keel check-kernel [CONFIG]`: compare a kernel configuration (a distribution's, say)
//! with keel's kernel fragment, section by section. The fragment is the single list: what
//! keel's own kernel is built with is exactly what this checks for. Options of the
//! namespace/cgroup/seccomp section are required (without them the sandbox cannot hold);
//! the rest are reported.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const FRAGMENT: &str = include_str!("../kernel-config/keel.config");

/// Sections whose options keel's sandbox cannot do without.
const REQUIRED: &str = "namespaces";

#[derive(Debug, PartialEq, Eq)]
pub struct Expect {
    pub section: String,
    pub option: String,
    /// `Some("y")` etc., or `None`: must not be set.
    pub value: Option<String>,
}

/// The fragment's `CONFIG_X=v` and `# CONFIG_X is not set` lines under their `# --- name`
/// section headers.
pub fn expectations(fragment: &str) -> Vec<Expect> {
    let mut section = String::from("base");
    let mut out = Vec::new();
    for line in fragment.lines().map(str::trim) {
        if let Some(s) = line.strip_prefix("# ---") {
            section = s.trim().to_string();
        } else if let Some((opt, v)) = line.split_once('=').filter(|(o, _)| o.starts_with("CONFIG_")) {
            out.push(Expect {
                section: section.clone(),
                option: opt.into(),
                value: Some(v.into()),
            });
        } else if let Some(opt) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
            .filter(|o| o.starts_with("CONFIG_"))
        {
            out.push(Expect {
                section: section.clone(),
                option: opt.into(),
                value: None,
            });
        }
    }
    out
}

/// A .config's set options.
pub fn parse(config: &str) -> HashMap<String, String> {
    config
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .filter(|(o, _)| o.starts_with("CONFIG_"))
        .map(|(o, v)| (o.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// What differs from an expectation, in words; None when it holds.
pub fn verdict(e: &Expect, config: &HashMap<String, String>) -> Option<String> {
    let got = config.get(&e.option).map(String::as_str);
    match (e.value.as_deref(), got) {
        (None, None | Some("n")) => None,
        (None, Some(v)) => Some(format!("{}: should not be set (is {v})", e.option)),
        (Some(want), Some(v)) if v == want => None,
        (Some("y"), Some("m")) => Some(format!("{}: a module (keel loads no modules)", e.option)),
        (Some(want), Some(v)) => Some(format!("{}: is {v}, want {want}", e.option)),
        (Some(want), None) => Some(format!("{}: not set, want {want}", e.option)),
    }
}

fn read_config(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut text = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .map_err(|e| format!("{}: cannot decompress: {e}", path.display()))?;
        return Ok(text);
    }
    String::from_utf8(bytes).map_err(|e| format!("{}: not text: {e}", path.display()))
}

/// The running kernel's configuration: /proc/config.gz, else /boot/config-RELEASE.
fn running_config() -> Option<PathBuf> {
    let proc = PathBuf::from("/proc/config.gz");
    if proc.exists() {
        return Some(proc);
    }
    let release = nix::sys::utsname::uname()
        .ok()?
        .release()
        .to_string_lossy()
        .into_owned();
    Some(PathBuf::from(format!("/boot/config-{release}"))).filter(|p| p.exists())
}

pub fn run(args: &[String]) -> ExitCode {
    let path = match args {
        [] => match running_config() {
            Some(p) => p,
            None => {
                eprintln!(
                    "keel check-kernel: no /proc/config.gz or /boot/config-$(uname -r); give a .config"
                );
                return ExitCode::from(2);
            }
        },
        [p] if !p.starts_with('-') => PathBuf::from(p),
        _ => {
            eprintln!("usage: keel check-kernel [KERNEL_CONFIG]");
            return ExitCode::from(2);
        }
    };
    let config = match read_config(&path) {
        Ok(t) => parse(&t),
        Err(e) => {
            eprintln!("keel check-kernel: {e}");
            return ExitCode::from(2);
        }
    };
    println!("{} against keel's kernel fragment:", path.display());
    let expects = expectations(FRAGMENT);
    let mut sections: Vec<&str> = expects.iter().map(|e| e.section.as_str()).collect();
    sections.dedup();
    let mut required_missing = 0;
    for s in sections {
        let of: Vec<&Expect> = expects.iter().filter(|e| e.section == s).collect();
        let gaps: Vec<String> = of.iter().filter_map(|e| verdict(e, &config)).collect();
        let required = s.starts_with(REQUIRED);
        if required {
            required_missing += gaps.len();
        }
        let tag = if required { " (required)" } else { "" };
        if gaps.is_empty() {
            println!("  {s}{tag}: all {} as keel's kernel", of.len());
        } else {
            println!("  {s}{tag}: {} of {} differ", gaps.len(), of.len());
            for g in gaps {
                println!("    {g}");
            }
        }
    }
    if required_missing > 0 {
        println!("this kernel lacks what keel's sandbox needs");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fragment_lists_sections_and_both_kinds_of_line() {
        let e = expectations(FRAGMENT);
        assert!(e
            .iter()
            .any(|x| x.option == "CONFIG_SECCOMP_FILTER" && x.section.starts_with(REQUIRED)));
        assert!(e.iter().any(|x| x.option == "CONFIG_KEXEC" && x.value.is_none()));
        assert!(e.iter().any(|x| x.section.starts_with("hardening")));
        assert!(e.len() > 90);
    }

    #[test]
    fn verdicts() {
        let c = parse("CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_D=\"x\"\nCONFIG_E=y\n");
        let ex = |o: &str, v: Option<&str>| Expect {
            section: "s".into(),
            option: o.into(),
            value: v.map(String::from),
        };
        assert_eq!(verdict(&ex("CONFIG_A", Some("y")), &c), None);
        assert!(verdict(&ex("CONFIG_B", Some("y")), &c)
            .unwrap()
            .contains("module"));
        assert!(verdict(&ex("CONFIG_C", Some("y")), &c)
            .unwrap()
            .contains("not set"));
        assert_eq!(verdict(&ex("CONFIG_C", None), &c), None);
        assert_eq!(verdict(&ex("CONFIG_D", Some("x")), &c), None);
        assert!(verdict(&ex("CONFIG_E", None), &c)
            .unwrap()
            .contains("should not be set"));
    }
}
