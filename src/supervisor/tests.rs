use super::*;

fn secs(s: u64) -> Time {
    Duration::from_secs(s)
}

fn unit(name: &str, kind: Kind) -> UnitSpec {
    UnitSpec {
        name: name.into(),
        kind,
        timeout: secs(60),
        stop_timeout: secs(10),
    }
}

/// onboot a, b; services s1, s2; onshutdown z.
fn machine(policy: OnbootFailure) -> Machine {
    Machine::new(
        vec![
            unit("a", Kind::Onboot),
            unit("b", Kind::Onboot),
            unit("s1", Kind::Service),
            unit("s2", Kind::Service),
            unit("z", Kind::Onshutdown),
        ],
        policy,
    )
}

fn non_log(actions: Vec<Action>) -> Vec<Action> {
    actions
        .into_iter()
        .filter(|a| !matches!(a, Action::Log(..)))
        .collect()
}

fn logs(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Log(_, m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

/// Drive the machine through a clean boot: both onboot succeed, services running.
fn booted(m: &mut Machine) {
    assert_eq!(non_log(m.handle(secs(0), Event::Boot)), vec![Action::Start(0)]);
    assert_eq!(non_log(m.handle(secs(0), Event::Started(0))), vec![]);
    assert_eq!(
        non_log(m.handle(secs(1), Event::Exited(0, Exit::Code(0)))),
        vec![Action::Start(1)]
    );
    m.handle(secs(1), Event::Started(1));
    assert_eq!(
        non_log(m.handle(secs(2), Event::Exited(1, Exit::Code(0)))),
        vec![Action::Start(2), Action::Start(3)]
    );
    m.handle(secs(2), Event::Started(2));
    m.handle(secs(2), Event::Started(3));
    assert_eq!(m.state(2), &UnitState::Running { since: secs(2) });
}

#[test]
fn onboot_runs_strictly_in_order_then_services_start() {
    let mut m = machine(OnbootFailure::Continue);
    booted(&mut m);
    assert!(!m.shutting_down());
    assert_eq!(m.next_deadline(), None, "services have no run limit");
}

#[test]
fn onboot_exit_codes_are_reported_by_name() {
    let mut m = machine(OnbootFailure::Continue);
    m.handle(secs(0), Event::Boot);
    m.handle(secs(0), Event::Started(0));
    let a = m.handle(secs(1), Event::Exited(0, Exit::Code(3)));
    assert!(
        logs(&a).iter().any(|l| l == "onboot a failed: exit code 3"),
        "{a:?}"
    );
    // continue policy: the next onboot container still runs
    assert!(a.contains(&Action::Start(1)));
    m.handle(secs(1), Event::Started(1));
    let a = m.handle(secs(2), Event::Exited(1, Exit::Code(0)));
    assert!(
        logs(&a).iter().any(|l| l == "onboot b finished: exit code 0"),
        "{a:?}"
    );
}

#[test]
fn failing_onboot_with_poweroff_policy_stops_the_boot() {
    let mut m = machine(OnbootFailure::Poweroff);
    m.handle(secs(0), Event::Boot);
    m.handle(secs(0), Event::Started(0));
    let a = m.handle(secs(1), Event::Exited(0, Exit::Signal(9)));
    assert!(
        logs(&a)
            .iter()
            .any(|l| l.contains("boot stopped: onboot a failed")),
        "{a:?}"
    );
    // No services, onboot b skipped, straight to onshutdown.
    assert_eq!(non_log(a), vec![Action::Start(4)]);
    assert_eq!(m.state(1), &UnitState::Skipped);
    assert_eq!(m.state(2), &UnitState::Skipped);
    m.handle(secs(1), Event::Started(4));
    let a = m.handle(secs(2), Event::Exited(4, Exit::Code(0)));
    assert_eq!(non_log(a), vec![Action::Finish(ShutdownKind::Poweroff)]);
    assert!(m.finished());
}

#[test]
fn onboot_that_cannot_start_counts_as_failed() {
    let mut m = machine(OnbootFailure::Reboot);
    m.handle(secs(0), Event::Boot);
    let a = m.handle(
        secs(0),
        Event::StartFailed(0, "bundle a: config.json: bad".into()),
    );
    assert!(logs(&a)[0].contains("onboot a failed to start: bundle a: config.json: bad"));
    assert_eq!(non_log(a), vec![Action::Start(4)]);
    m.handle(secs(0), Event::Started(4));
    let a = m.handle(secs(1), Event::Exited(4, Exit::Code(0)));
    assert_eq!(non_log(a), vec![Action::Finish(ShutdownKind::Reboot)]);
}

#[test]
fn hanging_onboot_is_killed_at_its_timeout_and_boot_goes_on() {
    let mut m = machine(OnbootFailure::Continue);
    m.handle(secs(0), Event::Boot);
    m.handle(secs(0), Event::Started(0));
    assert_eq!(m.next_deadline(), Some(secs(60)));
    assert_eq!(non_log(m.tick(secs(59))), vec![]);
    let a = m.tick(secs(60));
    assert!(logs(&a)[0].contains("onboot a timed out after 1m"), "{a:?}");
    assert_eq!(non_log(a), vec![Action::Signal(0, StopSignal::Kill)]);
    let a = m.handle(secs(60), Event::Exited(0, Exit::Signal(9)));
    assert!(logs(&a)
        .iter()
        .any(|l| l.contains("onboot a failed: timed out (signal SIGKILL)")));
    assert_eq!(non_log(a), vec![Action::Start(1)]);
}

#[test]
fn onboot_stuck_after_sigkill_is_abandoned() {
    let mut m = machine(OnbootFailure::Continue);
    m.handle(secs(0), Event::Boot);
    m.handle(secs(0), Event::Started(0));
    m.tick(secs(60));
    assert_eq!(m.next_deadline(), Some(secs(60) + KILL_GRACE));
    let a = m.tick(secs(65));
    assert_eq!(non_log(a), vec![Action::Abandon(0), Action::Start(1)]);
    // A late exit report for the abandoned unit changes nothing.
    assert_eq!(
        non_log(m.handle(secs(70), Event::Exited(0, Exit::Signal(9)))),
        vec![]
    );
}

#[test]
fn shutdown_terms_services_then_kills_after_stop_timeout_then_runs_onshutdown() {
    let mut m = machine(OnbootFailure::Continue);
    booted(&mut m);
    let a = m.handle(secs(100), Event::Shutdown(ShutdownKind::Poweroff));
    assert_eq!(
        non_log(a),
        vec![
            Action::Signal(2, StopSignal::Term),
            Action::Signal(3, StopSignal::Term)
        ]
    );
    assert!(m.shutting_down());
    // s1 obeys SIGTERM; s2 ignores it.
    assert_eq!(
        non_log(m.handle(secs(101), Event::Exited(2, Exit::Code(0)))),
        vec![]
    );
    assert_eq!(m.next_deadline(), Some(secs(110)));
    assert_eq!(non_log(m.tick(secs(109))), vec![]);
    let a = m.tick(secs(110));
    assert!(logs(&a)[0].contains("service s2 did not stop within 10s"));
    assert_eq!(non_log(a), vec![Action::Signal(3, StopSignal::Kill)]);
    let a = m.handle(secs(110), Event::Exited(3, Exit::Signal(9)));
    assert_eq!(non_log(a), vec![Action::Start(4)]);
    m.handle(secs(110), Event::Started(4));
    let a = m.handle(secs(111), Event::Exited(4, Exit::Code(0)));
    assert_eq!(non_log(a), vec![Action::Finish(ShutdownKind::Poweroff)]);
}

#[test]
fn hanging_onshutdown_is_bounded() {
    let mut m = machine(OnbootFailure::Continue);
    booted(&mut m);
    m.handle(secs(100), Event::Shutdown(ShutdownKind::Halt));
    m.handle(secs(100), Event::Exited(2, Exit::Code(0)));
    let a = m.handle(secs(100), Event::Exited(3, Exit::Code(0)));
    assert_eq!(non_log(a), vec![Action::Start(4)]);
    m.handle(secs(100), Event::Started(4));
    assert_eq!(
        non_log(m.tick(secs(160))),
        vec![Action::Signal(4, StopSignal::Kill)]
    );
    let a = m.tick(secs(165));
    assert_eq!(
        non_log(a),
        vec![Action::Abandon(4), Action::Finish(ShutdownKind::Halt)]
    );
}

#[test]
fn shutdown_during_onboot_stops_the_running_container_and_skips_the_rest() {
    let mut m = machine(OnbootFailure::Continue);
    m.handle(secs(0), Event::Boot);
    m.handle(secs(0), Event::Started(0));
    let a = m.handle(secs(1), Event::Shutdown(ShutdownKind::Reboot));
    assert_eq!(non_log(a), vec![Action::Signal(0, StopSignal::Term)]);
    assert_eq!(m.state(1), &UnitState::Skipped);
    let a = m.handle(secs(2), Event::Exited(0, Exit::Signal(15)));
    assert_eq!(non_log(a), vec![Action::Start(4)]);
    assert_eq!(m.state(2), &UnitState::Skipped);
}

#[test]
fn repeated_shutdown_requests_are_ignored() {
    let mut m = machine(OnbootFailure::Continue);
    booted(&mut m);
    m.handle(secs(5), Event::Shutdown(ShutdownKind::Poweroff));
    let a = m.handle(secs(6), Event::Shutdown(ShutdownKind::Reboot));
    assert_eq!(non_log(a.clone()), vec![]);
    assert!(logs(&a)[0].contains("already shutting down"));
    m.handle(secs(6), Event::Exited(2, Exit::Code(0)));
    m.handle(secs(6), Event::Exited(3, Exit::Code(0)));
    m.handle(secs(6), Event::Started(4));
    let a = m.handle(secs(7), Event::Exited(4, Exit::Code(0)));
    assert_eq!(non_log(a), vec![Action::Finish(ShutdownKind::Poweroff)]);
}

#[test]
fn service_exit_is_reported_and_boot_stays_up() {
    let mut m = machine(OnbootFailure::Continue);
    booted(&mut m);
    let a = m.handle(secs(9), Event::Exited(2, Exit::Code(1)));
    assert_eq!(logs(&a), vec!["service s1 exited: exit code 1".to_string()]);
    assert_eq!(non_log(a), vec![]);
    assert!(!m.shutting_down());
    // Shutdown now only has s2 to stop.
    let a = m.handle(secs(10), Event::Shutdown(ShutdownKind::Poweroff));
    assert_eq!(non_log(a), vec![Action::Signal(3, StopSignal::Term)]);
}

#[test]
fn service_that_fails_to_start_does_not_block_shutdown() {
    let mut m = machine(OnbootFailure::Continue);
    m.handle(secs(0), Event::Boot);
    m.handle(secs(0), Event::Started(0));
    m.handle(secs(0), Event::Exited(0, Exit::Code(0)));
    m.handle(secs(0), Event::Started(1));
    m.handle(secs(0), Event::Exited(1, Exit::Code(0)));
    m.handle(secs(0), Event::StartFailed(2, "no rootfs".into()));
    m.handle(secs(0), Event::Started(3));
    let a = m.handle(secs(1), Event::Shutdown(ShutdownKind::Poweroff));
    assert_eq!(non_log(a), vec![Action::Signal(3, StopSignal::Term)]);
}

#[test]
fn empty_image_boots_and_shuts_down() {
    let mut m = Machine::new(vec![], OnbootFailure::Continue);
    let a = m.handle(secs(0), Event::Boot);
    assert!(logs(&a)[0].contains("no services"));
    let a = m.handle(secs(1), Event::Shutdown(ShutdownKind::Poweroff));
    assert_eq!(non_log(a), vec![Action::Finish(ShutdownKind::Poweroff)]);
    assert!(m.finished());
}

#[test]
fn out_of_range_ids_are_ignored() {
    let mut m = machine(OnbootFailure::Continue);
    booted(&mut m);
    assert_eq!(m.handle(secs(3), Event::Exited(99, Exit::Code(0))), vec![]);
    assert_eq!(m.handle(secs(3), Event::Started(99)), vec![]);
    assert_eq!(m.handle(secs(3), Event::StartFailed(99, "x".into())), vec![]);
}
