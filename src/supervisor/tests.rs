use super::*;

fn secs(s: u64) -> Time {
    Duration::from_secs(s)
}

fn ms(n: u64) -> Time {
    Duration::from_millis(n)
}

fn unit(name: &str, kind: Kind) -> UnitSpec {
    let mut u = UnitSpec::new(name, kind);
    u.timeout = secs(60);
    u.stop_timeout = secs(10);
    u
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
    assert_eq!(
        m.state(2),
        &UnitState::Running {
            since: secs(2),
            ready: true
        }
    );
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
    assert_eq!(
        logs(&a),
        ["service s1 exited: exit code 1", "restarting service s1 in 100ms"]
    );
    assert_eq!(non_log(a), vec![]);
    assert_eq!(
        m.state(2),
        &UnitState::Backoff {
            until: secs(9) + ms(100)
        }
    );
    assert!(!m.shutting_down());
    // Shutdown now only has s2 to stop; s1 will not be restarted.
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

#[test]
fn services_start_after_the_services_they_depend_on_are_ready() {
    let mut db = unit("db", Kind::Service);
    db.service.readiness = Readiness::Notify;
    let mut web = unit("web", Kind::Service);
    web.service.depends_on = vec!["db".into()];
    let cache = unit("cache", Kind::Service);
    let mut m = Machine::new(vec![web, db, cache], OnbootFailure::Continue);
    // Independent services start together; web waits for db.
    assert_eq!(
        non_log(m.handle(secs(0), Event::Boot)),
        vec![Action::Start(1), Action::Start(2)]
    );
    let a = m.handle(secs(0), Event::Started(1));
    assert_eq!(logs(&a), ["started service db (waiting for READY=1)"]);
    assert_eq!(non_log(a), vec![]);
    assert_eq!(m.state(0), &UnitState::Waiting);
    let a = m.handle(secs(3), Event::Ready(1));
    assert_eq!(logs(&a), ["service db is ready"]);
    assert_eq!(non_log(a), vec![Action::Start(0)]);
}

#[test]
fn a_service_not_ready_in_time_is_stopped_and_restarted() {
    let mut db = unit("db", Kind::Service);
    db.service.readiness = Readiness::Notify;
    db.service.start_timeout = secs(20);
    let mut m = Machine::new(vec![db], OnbootFailure::Continue);
    m.handle(secs(0), Event::Boot);
    m.handle(secs(0), Event::Started(0));
    assert_eq!(m.next_deadline(), Some(secs(20)));
    let a = m.tick(secs(20));
    assert!(logs(&a)[0].contains("service db not ready within 20s; stopping it"));
    assert_eq!(non_log(a), vec![Action::Signal(0, StopSignal::Term)]);
    m.handle(secs(21), Event::Exited(0, Exit::Code(0)));
    assert_eq!(
        m.state(0),
        &UnitState::Backoff {
            until: secs(21) + ms(100)
        }
    );
}

#[test]
fn crash_loop_backs_off_exponentially_then_hits_the_start_limit() {
    let mut s = unit("crash", Kind::Service);
    s.service.start_limit = StartLimit {
        burst: 6,
        interval: secs(60),
    };
    let mut m = Machine::new(vec![s], OnbootFailure::Continue);
    let mut now = secs(0);
    let mut delays = Vec::new();
    let mut a = m.handle(now, Event::Boot);
    loop {
        assert_eq!(non_log(a), vec![Action::Start(0)]);
        m.handle(now, Event::Started(0));
        now += ms(10);
        a = m.handle(now, Event::Exited(0, Exit::Code(2)));
        match m.state(0).clone() {
            UnitState::Backoff { until } => {
                delays.push((until - now).as_millis());
                assert_eq!(m.next_deadline(), Some(until));
                now = until;
                a = m.tick(now);
            }
            UnitState::Failed { reason, .. } => {
                assert_eq!(reason, "start limit reached: 6 starts within 1m");
                assert!(logs(&a)
                    .iter()
                    .any(|l| l.contains("service crash failed: start limit reached")));
                break;
            }
            other => panic!("unexpected state {other:?}"),
        }
    }
    assert_eq!(delays, [100, 200, 400, 800, 1600]);
    assert_eq!(m.info(0).restarts, 5);
    assert_eq!(m.info(0).last_exit, Some(Exit::Code(2)));
    assert_eq!(m.next_deadline(), None, "a failed service is left alone");
}

#[test]
fn backoff_resets_after_a_long_enough_run() {
    let mut m = Machine::new(vec![unit("s", Kind::Service)], OnbootFailure::Continue);
    m.handle(secs(0), Event::Boot);
    m.handle(secs(0), Event::Started(0));
    m.handle(secs(1), Event::Exited(0, Exit::Code(1)));
    m.tick(secs(1) + ms(100));
    m.handle(secs(1) + ms(100), Event::Started(0));
    m.handle(secs(2), Event::Exited(0, Exit::Code(1)));
    assert_eq!(
        m.state(0),
        &UnitState::Backoff {
            until: secs(2) + ms(200)
        }
    );
    m.tick(secs(3));
    m.handle(secs(3), Event::Started(0));
    // Up for 10s (the reset threshold): the next delay is the initial one again.
    m.handle(secs(13), Event::Exited(0, Exit::Code(1)));
    assert_eq!(
        m.state(0),
        &UnitState::Backoff {
            until: secs(13) + ms(100)
        }
    );
}

#[test]
fn restart_policies_never_and_on_failure() {
    let mut never = unit("never", Kind::Service);
    never.service.restart = Restart::Never;
    let mut onf = unit("onf", Kind::Service);
    onf.service.restart = Restart::OnFailure;
    let mut m = Machine::new(vec![never, onf], OnbootFailure::Continue);
    m.handle(secs(0), Event::Boot);
    m.handle(secs(0), Event::Started(0));
    m.handle(secs(0), Event::Started(1));
    m.handle(secs(1), Event::Exited(0, Exit::Code(1)));
    assert_eq!(
        m.state(0),
        &UnitState::Exited {
            exit: Exit::Code(1),
            timed_out: false
        }
    );
    m.handle(secs(1), Event::Exited(1, Exit::Code(0)));
    assert_eq!(
        m.state(1),
        &UnitState::Exited {
            exit: Exit::Code(0),
            timed_out: false
        }
    );
    assert_eq!(m.next_deadline(), None);
}

#[test]
fn dependents_of_a_dead_service_say_why_and_wake_when_it_is_started() {
    let mut db = unit("db", Kind::Service);
    db.service.restart = Restart::Never;
    db.service.readiness = Readiness::Notify;
    let mut web = unit("web", Kind::Service);
    web.service.depends_on = vec!["db".into()];
    let mut m = Machine::new(vec![db, web], OnbootFailure::Continue);
    m.handle(secs(0), Event::Boot);
    m.handle(secs(0), Event::Started(0));
    let a = m.handle(secs(1), Event::Exited(0, Exit::Code(1)));
    assert!(
        logs(&a)
            .iter()
            .any(|l| l == "service web not started: dependency db is failed"),
        "{a:?}"
    );
    assert_eq!(
        m.state(1),
        &UnitState::Failed {
            reason: "dependency db is failed".into(),
            blocked_by: Some(0)
        }
    );
    let a = m.handle(secs(5), Event::UserStart(0));
    assert_eq!(non_log(a), vec![Action::Start(0)]);
    assert_eq!(m.state(1), &UnitState::Waiting);
    m.handle(secs(5), Event::Started(0));
    assert_eq!(
        non_log(m.handle(secs(6), Event::Ready(0))),
        vec![Action::Start(1)]
    );
}

#[test]
fn unknown_dependencies_and_cycles_fail_with_the_reason() {
    let mut a = unit("a", Kind::Service);
    a.service.depends_on = vec!["b".into()];
    let mut b = unit("b", Kind::Service);
    b.service.depends_on = vec!["a".into()];
    let mut c = unit("c", Kind::Service);
    c.service.depends_on = vec!["nope".into()];
    let mut d = unit("d", Kind::Service);
    d.service.depends_on = vec!["c".into()];
    let ok = unit("ok", Kind::Service);
    let mut m = Machine::new(vec![a, b, c, d, ok], OnbootFailure::Continue);
    let acts = m.handle(secs(0), Event::Boot);
    let l = logs(&acts);
    assert!(
        l.contains(&"service a cannot start: dependency cycle: a -> b -> a".to_string()),
        "{l:?}"
    );
    assert!(
        l.contains(&"service b cannot start: dependency cycle: b -> a -> b".to_string()),
        "{l:?}"
    );
    assert!(
        l.contains(&"service c cannot start: depends on unknown service nope".to_string()),
        "{l:?}"
    );
    assert!(
        l.contains(&"service d not started: dependency c is failed".to_string()),
        "{l:?}"
    );
    assert_eq!(non_log(acts), vec![Action::Start(4)]);
}

#[test]
fn shutdown_stops_dependents_first_then_what_they_depend_on() {
    let db = unit("db", Kind::Service);
    let mut web = unit("web", Kind::Service);
    web.service.depends_on = vec!["db".into()];
    let mut lb = unit("lb", Kind::Service);
    lb.service.depends_on = vec!["web".into()];
    let other = unit("other", Kind::Service);
    let mut m = Machine::new(
        vec![db, web, lb, other, unit("z", Kind::Onshutdown)],
        OnbootFailure::Continue,
    );
    m.handle(secs(0), Event::Boot);
    m.handle(secs(0), Event::Started(0));
    m.handle(secs(0), Event::Started(3));
    m.handle(secs(0), Event::Started(1));
    m.handle(secs(0), Event::Started(2));
    let a = m.handle(secs(10), Event::Shutdown(ShutdownKind::Poweroff));
    // lb and other in parallel; web and db must wait.
    assert_eq!(
        non_log(a),
        vec![
            Action::Signal(2, StopSignal::Term),
            Action::Signal(3, StopSignal::Term)
        ]
    );
    assert_eq!(
        non_log(m.handle(secs(11), Event::Exited(3, Exit::Code(0)))),
        vec![]
    );
    assert_eq!(
        non_log(m.handle(secs(12), Event::Exited(2, Exit::Code(0)))),
        vec![Action::Signal(1, StopSignal::Term)]
    );
    assert_eq!(
        non_log(m.handle(secs(13), Event::Exited(1, Exit::Code(0)))),
        vec![Action::Signal(0, StopSignal::Term)]
    );
    assert_eq!(
        non_log(m.handle(secs(14), Event::Exited(0, Exit::Code(0)))),
        vec![Action::Start(4)]
    );
}

#[test]
fn the_whole_stop_is_bounded() {
    let mut slow = unit("slow", Kind::Service);
    slow.stop_timeout = secs(1000);
    let mut m = Machine::new(vec![slow], OnbootFailure::Continue);
    m.handle(secs(0), Event::Boot);
    m.handle(secs(0), Event::Started(0));
    m.handle(secs(10), Event::Shutdown(ShutdownKind::Poweroff));
    assert_eq!(m.next_deadline(), Some(secs(10) + SHUTDOWN_BOUND));
    let a = m.tick(secs(10) + SHUTDOWN_BOUND);
    assert!(
        logs(&a)[0].contains("shutdown bound of 1m30s reached; killing slow"),
        "{a:?}"
    );
    assert_eq!(non_log(a), vec![Action::Signal(0, StopSignal::Kill)]);
    let a = m.handle(secs(101), Event::Exited(0, Exit::Signal(9)));
    assert_eq!(non_log(a), vec![Action::Finish(ShutdownKind::Poweroff)]);
}

#[test]
fn user_stop_start_and_restart() {
    let mut m = Machine::new(vec![unit("s", Kind::Service)], OnbootFailure::Continue);
    m.handle(secs(0), Event::Boot);
    m.handle(secs(0), Event::Started(0));
    assert_eq!(
        non_log(m.handle(secs(1), Event::UserStop(0))),
        vec![Action::Signal(0, StopSignal::Term)]
    );
    m.handle(secs(2), Event::Exited(0, Exit::Signal(15)));
    assert_eq!(
        m.state(0),
        &UnitState::Stopped,
        "no restart after a requested stop"
    );
    assert_eq!(m.next_deadline(), None);
    assert_eq!(
        non_log(m.handle(secs(3), Event::UserStart(0))),
        vec![Action::Start(0)]
    );
    m.handle(secs(3), Event::Started(0));
    assert_eq!(
        non_log(m.handle(secs(4), Event::UserRestart(0))),
        vec![Action::Signal(0, StopSignal::Term)]
    );
    // Restarted at once, without backoff.
    assert_eq!(
        non_log(m.handle(secs(5), Event::Exited(0, Exit::Code(0)))),
        vec![Action::Start(0)]
    );
    assert_eq!(m.info(0).restarts, 1);
    // Restart of a stopped service starts it.
    m.handle(secs(5), Event::Started(0));
    m.handle(secs(6), Event::UserStop(0));
    m.handle(secs(6), Event::Exited(0, Exit::Code(0)));
    assert_eq!(
        non_log(m.handle(secs(7), Event::UserRestart(0))),
        vec![Action::Start(0)]
    );
}

#[test]
fn a_failed_service_can_be_started_again_by_hand() {
    let mut s = unit("s", Kind::Service);
    s.service.start_limit = StartLimit {
        burst: 1,
        interval: secs(60),
    };
    let mut m = Machine::new(vec![s], OnbootFailure::Continue);
    m.handle(secs(0), Event::Boot);
    m.handle(secs(0), Event::StartFailed(0, "no rootfs".into()));
    assert!(matches!(m.state(0), UnitState::Failed { .. }));
    assert_eq!(
        non_log(m.handle(secs(1), Event::UserStart(0))),
        vec![Action::Start(0)]
    );
}

#[test]
fn a_service_started_during_shutdown_is_stopped_at_once() {
    let mut m = Machine::new(
        vec![unit("a", Kind::Service), unit("b", Kind::Service)],
        OnbootFailure::Continue,
    );
    m.handle(secs(0), Event::Boot);
    m.handle(secs(0), Event::Started(0));
    // b's Started is still queued when the shutdown arrives.
    assert_eq!(
        non_log(m.handle(secs(1), Event::Shutdown(ShutdownKind::Poweroff))),
        vec![Action::Signal(0, StopSignal::Term)]
    );
    assert_eq!(
        non_log(m.handle(secs(1), Event::Started(1))),
        vec![Action::Signal(1, StopSignal::Term)]
    );
}

#[test]
fn ctl_commands_are_refused_where_they_make_no_sense() {
    let mut m = machine(OnbootFailure::Continue);
    m.handle(secs(0), Event::Boot);
    let a = m.handle(secs(0), Event::UserStart(2));
    assert!(
        logs(&a)[0].contains("refused"),
        "services do not start before onboot ends"
    );
    let a = m.handle(secs(0), Event::UserStop(0));
    assert!(
        logs(&a)[0].contains("refused"),
        "onboot containers are not services"
    );
}

fn checked(name: &str, interval: u64, retries: u32) -> UnitSpec {
    let mut u = unit(name, Kind::Service);
    let mut h = Healthcheck::new(vec!["/bin/check".into()]);
    h.interval = secs(interval);
    h.timeout = secs(2);
    h.retries = retries;
    u.service.healthcheck = Some(h);
    u
}

#[test]
fn health_checks_run_every_interval_and_consecutive_failures_restart() {
    let mut m = Machine::new(vec![checked("web", 5, 3)], OnbootFailure::Continue);
    m.handle(secs(0), Event::Boot);
    m.handle(secs(0), Event::Started(0));
    assert_eq!(m.next_deadline(), Some(secs(5)));
    assert_eq!(non_log(m.tick(secs(5))), vec![Action::RunHealthcheck(0)]);
    assert_eq!(m.info(0).health.as_deref(), Some("starting"));
    m.handle(secs(6), Event::Health(0, true));
    assert_eq!(m.info(0).health.as_deref(), Some("healthy"));
    assert_eq!(m.next_deadline(), Some(secs(11)));
    // Two failures, then a pass: the count starts again.
    for t in [11, 16] {
        m.tick(secs(t));
        let a = m.handle(secs(t), Event::Health(0, false));
        assert_eq!(non_log(a), vec![]);
    }
    assert_eq!(m.info(0).health.as_deref(), Some("unhealthy (2 failed)"));
    m.tick(secs(21));
    m.handle(secs(21), Event::Health(0, true));
    for t in [26, 31] {
        m.tick(secs(t));
        m.handle(secs(t), Event::Health(0, false));
    }
    m.tick(secs(36));
    let a = m.handle(secs(36), Event::Health(0, false));
    assert!(
        logs(&a)
            .iter()
            .any(|l| l == "service web is unhealthy after 3 failed checks; restarting it"),
        "{a:?}"
    );
    assert_eq!(non_log(a), vec![Action::Signal(0, StopSignal::Term)]);
    // No checks while it stops; it exits and is restarted as a failure.
    assert_eq!(m.next_deadline(), Some(secs(46)), "only the stop timeout");
    m.handle(secs(37), Event::Exited(0, Exit::Code(0)));
    assert_eq!(
        m.state(0),
        &UnitState::Backoff {
            until: secs(37) + ms(100)
        }
    );
}

#[test]
fn a_health_check_that_overruns_is_killed_and_counts_as_failed() {
    let mut m = Machine::new(vec![checked("web", 5, 1)], OnbootFailure::Continue);
    m.handle(secs(0), Event::Boot);
    m.handle(secs(0), Event::Started(0));
    m.tick(secs(5));
    assert_eq!(m.next_deadline(), Some(secs(7)));
    let a = m.tick(secs(7));
    assert!(
        logs(&a)[0].contains("health check of service web timed out after 2s"),
        "{a:?}"
    );
    assert_eq!(
        non_log(a),
        vec![Action::KillHealthcheck(0), Action::Signal(0, StopSignal::Term)]
    );
    // The killed check's own report comes late and changes nothing.
    assert_eq!(m.handle(secs(7), Event::Health(0, false)), vec![]);
}

#[test]
fn readiness_by_health_check_gates_dependents() {
    let mut db = checked("db", 1, 3);
    db.service.readiness = Readiness::Healthcheck;
    let mut web = unit("web", Kind::Service);
    web.service.depends_on = vec!["db".into()];
    let mut m = Machine::new(vec![db, web], OnbootFailure::Continue);
    m.handle(secs(0), Event::Boot);
    let a = m.handle(secs(0), Event::Started(0));
    assert_eq!(logs(&a), ["started service db (waiting for its health check)"]);
    m.tick(secs(1));
    assert_eq!(non_log(m.handle(secs(1), Event::Health(0, false))), vec![]);
    m.tick(secs(2));
    let a = m.handle(secs(2), Event::Health(0, true));
    assert!(logs(&a).contains(&"service db is ready (health check passed)".to_string()));
    assert_eq!(non_log(a), vec![Action::Start(1)]);
}

fn watched(name: &str, secs_: u64) -> UnitSpec {
    let mut u = unit(name, Kind::Service);
    u.service.watchdog = Some(secs(secs_));
    u.stop_timeout = secs(3);
    u
}

#[test]
fn a_service_that_stops_pinging_its_watchdog_is_aborted_and_restarted_as_a_failure() {
    let mut m = Machine::new(vec![watched("wd", 10)], OnbootFailure::Continue);
    m.handle(secs(0), Event::Boot);
    m.handle(secs(0), Event::Started(0));
    // The deadline runs from the start and moves with every ping.
    assert_eq!(m.next_deadline(), Some(secs(10)));
    assert_eq!(m.handle(secs(4), Event::Watchdog(0)), vec![]);
    assert_eq!(m.next_deadline(), Some(secs(14)));
    m.handle(secs(9), Event::Watchdog(0));
    assert_eq!(non_log(m.tick(secs(18))), vec![], "19s is the deadline now");
    let a = m.tick(secs(19));
    assert_eq!(
        logs(&a),
        ["service wd missed its watchdog: no WATCHDOG=1 within 10s; sending SIGABRT"]
    );
    assert_eq!(non_log(a), vec![Action::Signal(0, StopSignal::Abort)]);
    // A ping while it stops changes nothing; it ignores SIGABRT: SIGKILL after stop_timeout.
    assert_eq!(m.handle(secs(20), Event::Watchdog(0)), vec![]);
    assert_eq!(m.next_deadline(), Some(secs(22)));
    assert_eq!(
        non_log(m.tick(secs(22))),
        vec![Action::Signal(0, StopSignal::Kill)]
    );
    m.handle(secs(22), Event::Exited(0, Exit::Signal(libc::SIGKILL)));
    assert_eq!(
        m.state(0),
        &UnitState::Backoff {
            until: secs(22) + ms(100)
        }
    );
    let info = m.info(0);
    assert_eq!(
        info.last_reason,
        Some("watchdog timeout: no WATCHDOG=1 within 10s")
    );
    assert_eq!(info.last_exit, Some(Exit::Signal(libc::SIGKILL)));
    // The next run gets a fresh deadline; a clean exit clears the reason.
    assert_eq!(non_log(m.tick(secs(23))), vec![Action::Start(0)]);
    m.handle(secs(23), Event::Started(0));
    assert_eq!(m.next_deadline(), Some(secs(33)));
    m.handle(secs(24), Event::Exited(0, Exit::Code(0)));
    assert_eq!(m.info(0).last_reason, None);
}

#[test]
fn a_failing_watchdog_obeys_the_restart_policy_and_a_silent_service_without_one_is_left_alone() {
    let mut wd = watched("wd", 2);
    wd.service.restart = Restart::Never;
    let mut m = Machine::new(vec![wd, unit("plain", Kind::Service)], OnbootFailure::Continue);
    m.handle(secs(0), Event::Boot);
    m.handle(secs(0), Event::Started(0));
    m.handle(secs(0), Event::Started(1));
    // Pings to a service without a watchdog are ignored.
    assert_eq!(m.handle(secs(1), Event::Watchdog(1)), vec![]);
    assert_eq!(
        non_log(m.tick(secs(2))),
        vec![Action::Signal(0, StopSignal::Abort)]
    );
    m.handle(secs(2), Event::Exited(0, Exit::Signal(libc::SIGABRT)));
    assert_eq!(
        m.state(0),
        &UnitState::Exited {
            exit: Exit::Signal(libc::SIGABRT),
            timed_out: false
        }
    );
    assert_eq!(m.next_deadline(), None);
    assert!(matches!(m.state(1), UnitState::Running { .. }));
}

#[test]
fn the_watchdog_does_not_fire_during_shutdown() {
    let mut m = Machine::new(vec![watched("wd", 5)], OnbootFailure::Continue);
    m.handle(secs(0), Event::Boot);
    m.handle(secs(0), Event::Started(0));
    let a = m.handle(secs(4), Event::Shutdown(ShutdownKind::Poweroff));
    assert_eq!(non_log(a), vec![Action::Signal(0, StopSignal::Term)]);
    // 5s passes while it stops: only the stop timeout (4 + 3 = 7s) matters.
    assert_eq!(m.next_deadline(), Some(secs(7)));
    assert_eq!(non_log(m.tick(secs(6))), vec![]);
}
