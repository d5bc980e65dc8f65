use super::*;

fn id(n: &str) -> IdentityId {
    IdentityId::new(&format!(
        "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{n}"
    ))
}

fn ids(ns: &[&str]) -> BTreeSet<IdentityId> {
    ns.iter().map(|n| id(n)).collect()
}

fn state(ns: &[&str]) -> Result<HostIdentities, PortError> {
    Ok(HostIdentities {
        user_assigned: ids(ns),
        ..HostIdentities::default()
    })
}

/// The changes of a PATCH step (its base is checked where it matters).
fn changes(step: Step) -> Option<(Vec<IdentityId>, Vec<IdentityId>)> {
    match step {
        Step::Patch { add, remove, .. } => Some((add, remove)),
        _ => None,
    }
}

fn patched(ns: &[&str]) -> Result<PatchOutcome, PortError> {
    state(ns).map(PatchOutcome::from)
}

/// What pods need, each identity recorded first (as the writer's object for it is stored
/// before the host's PATCH).
fn desire(
    b: &mut HostBatch,
    desired: BTreeSet<IdentityId>,
    immutable: BTreeSet<IdentityId>,
    now: Instant,
) {
    let mut recorded = b.recorded.clone();
    recorded.extend(desired.iter().cloned());
    b.set_recorded(recorded, now);
    b.set_desired(desired, immutable, now);
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Production settings without the linger, so each step can be read at one instant.
fn settings() -> BatchSettings {
    BatchSettings {
        linger: Duration::ZERO,
        ..BatchSettings::default()
    }
}

fn read_empty(b: &mut HostBatch, now: Instant) {
    assert_eq!(b.next(now), Step::Read);
    b.on_read(state(&[]), now);
}

/// A read that took as long as a real scale set's (longer than the longest linger).
fn read_empty_slowly(b: &mut HostBatch, answered: Instant) {
    assert_eq!(b.next(answered - secs(40)), Step::Read);
    b.on_read(state(&[]), answered);
}

#[test]
fn the_first_step_on_a_host_is_a_read() {
    let mut b = HostBatch::new(settings());
    let t = Instant::now();
    desire(&mut b, ids(&["a"]), BTreeSet::new(), t);
    assert_eq!(b.next(t), Step::Read);
    assert_eq!(b.next(t), Step::Busy);
    b.on_read(state(&[]), t);
    assert_eq!(changes(b.next(t)), Some((vec![id("a")], vec![])));
}

#[test]
fn everything_that_arrives_during_a_patch_goes_into_the_next_one() {
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    read_empty(&mut b, t);
    desire(&mut b, ids(&["a"]), BTreeSet::new(), t);
    assert!(matches!(b.next(t), Step::Patch { .. }));
    desire(&mut b, ids(&["a", "b"]), BTreeSet::new(), t);
    desire(&mut b, ids(&["a", "b", "c"]), BTreeSet::new(), t);
    assert_eq!(b.next(t), Step::Busy);
    b.on_patch(patched(&["a"]), t);
    assert_eq!(changes(b.next(t)), Some((vec![id("b"), id("c")], vec![])));
    b.on_patch(patched(&["a", "b", "c"]), t);
    assert_eq!(b.next(t), Step::Idle);
    assert_eq!(b.assigned(), ids(&["a", "b", "c"]));
}

#[test]
fn a_burst_to_an_idle_host_goes_out_once_it_pauses_but_a_change_queued_behind_a_patch_does_not_wait()
 {
    let t = Instant::now() + secs(60);
    let ms = Duration::from_millis;
    let mut b = HostBatch::new(BatchSettings::default());
    read_empty_slowly(&mut b, t);
    desire(&mut b, ids(&["a"]), BTreeSet::new(), t);
    assert_eq!(b.next(t), Step::WaitUntil(t + ms(300)));
    desire(&mut b, ids(&["a", "b"]), BTreeSet::new(), t + ms(200));
    assert_eq!(b.next(t + ms(300)), Step::WaitUntil(t + ms(500)));
    let go = t + ms(500);
    assert_eq!(changes(b.next(go)), Some((vec![id("a"), id("b")], vec![])));
    let back = go + secs(2);
    desire(&mut b, ids(&["a", "b", "c"]), BTreeSet::new(), back - ms(1));
    b.on_patch(patched(&["a", "b"]), back);
    assert_eq!(changes(b.next(back)), Some((vec![id("c")], vec![])));
}

#[test]
fn a_burst_that_never_pauses_waits_at_most_the_longest_linger() {
    let t = Instant::now() + secs(60);
    let mut b = HostBatch::new(BatchSettings::default());
    read_empty_slowly(&mut b, t);
    let mut want = BTreeSet::new();
    for i in 0..40u64 {
        let now = t + Duration::from_millis(100 * i);
        want.insert(id(&format!("i{i}")));
        desire(&mut b, want.clone(), BTreeSet::new(), now);
        if now >= t + Duration::from_millis(1500) {
            assert!(matches!(b.next(now), Step::Patch { .. }));
            return;
        }
        assert!(matches!(b.next(now), Step::WaitUntil(_)));
    }
    panic!("never sent");
}

#[test]
fn a_burst_waits_no_longer_than_the_hosts_last_arm_call_took() {
    let t = Instant::now();
    let mut b = HostBatch::new(BatchSettings::default());
    // The first read took 400 ms: a burst that never pauses waits at most that long, not the
    // longest linger (1.5 s), since the rest can ride the next PATCH within another 400 ms.
    assert_eq!(b.next(t), Step::Read);
    b.on_read(state(&[]), t + Duration::from_millis(400));
    let t = t + Duration::from_millis(400);
    let mut want = BTreeSet::new();
    for i in 0..40u64 {
        let now = t + Duration::from_millis(100 * i);
        want.insert(id(&format!("i{i}")));
        desire(&mut b, want.clone(), BTreeSet::new(), now);
        if now >= t + Duration::from_millis(400) {
            assert!(matches!(b.next(now), Step::Patch { .. }), "at {i}");
            return;
        }
        assert!(matches!(b.next(now), Step::WaitUntil(_)), "at {i}");
    }
    panic!("never sent");
}

#[test]
fn a_refused_identity_is_isolated_and_the_rest_is_retried_at_once() {
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    read_empty(&mut b, t);
    desire(&mut b, ids(&["a", "bad", "c"]), BTreeSet::new(), t);
    assert!(matches!(b.next(t), Step::Patch { .. }));
    let out = b.on_patch(
        Err(PortError::Refused {
            ids: vec![id("bad")],
            message: "identity not found".into(),
        }),
        t,
    );
    assert_eq!(
        out.refused.keys().cloned().collect::<Vec<_>>(),
        vec![id("bad")]
    );
    assert_eq!(changes(b.next(t)), Some((vec![id("a"), id("c")], vec![])));
    b.on_patch(patched(&["a", "c"]), t);
    // the refused one waits for its backoff, then is tried alone
    assert_eq!(b.next(t), Step::WaitUntil(t + secs(10)));
    assert_eq!(b.refusals(t)[&id("bad")], "identity not found");
    let t2 = t + secs(10);
    assert_eq!(changes(b.next(t2)), Some((vec![id("bad")], vec![])));
    b.on_patch(
        Err(PortError::Refused {
            ids: vec![],
            message: "still not found".into(),
        }),
        t2,
    );
    // a second refusal doubles the wait
    assert_eq!(b.next(t2), Step::WaitUntil(t2 + secs(20)));
}

#[test]
fn a_patch_that_applied_all_but_a_refused_identity_backs_off_only_that_one() {
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    read_empty(&mut b, t);
    desire(&mut b, ids(&["a", "bad"]), BTreeSet::new(), t);
    b.next(t);
    let out = b.on_patch(
        Ok(PatchOutcome {
            state: HostIdentities {
                user_assigned: ids(&["a"]),
                ..HostIdentities::default()
            },
            refused: vec![(id("bad"), "LinkedAuthorizationFailed".into())],
            preexisting: Vec::new(),
        }),
        t,
    );
    assert_eq!(out.refused.len(), 1);
    assert_eq!(b.assigned(), ids(&["a"]));
    assert_eq!(b.next(t), Step::WaitUntil(t + secs(10)));
}

#[test]
fn an_unused_identity_is_removed_only_after_the_grace_period() {
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    read_empty(&mut b, t);
    desire(&mut b, ids(&["a"]), BTreeSet::new(), t);
    b.next(t);
    b.on_patch(patched(&["a"]), t);
    let t1 = t + secs(5);
    desire(&mut b, BTreeSet::new(), BTreeSet::new(), t1);
    assert_eq!(b.releasing(), ids(&["a"]));
    assert_eq!(b.next(t1), Step::WaitUntil(t1 + secs(60)));
    let t2 = t1 + secs(60);
    assert_eq!(changes(b.next(t2)), Some((vec![], vec![id("a")])));
    b.on_patch(patched(&[]), t2);
    assert!(b.releasing().is_empty());
    assert!(b.owned().is_empty());
    assert_eq!(b.next(t2), Step::Idle);
}

#[test]
fn a_pod_needing_the_identity_again_cancels_its_removal() {
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    read_empty(&mut b, t);
    desire(&mut b, ids(&["a"]), BTreeSet::new(), t);
    b.next(t);
    b.on_patch(patched(&["a"]), t);
    desire(&mut b, BTreeSet::new(), BTreeSet::new(), t + secs(10));
    desire(&mut b, ids(&["a"]), BTreeSet::new(), t + secs(50));
    assert_eq!(b.next(t + secs(200)), Step::Idle);
    // and the grace period restarts from the next release
    desire(&mut b, BTreeSet::new(), BTreeSet::new(), t + secs(300));
    assert_eq!(b.next(t + secs(301)), Step::WaitUntil(t + secs(360)));
}

#[test]
fn identities_mic_did_not_add_are_never_removed() {
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    b.next(t);
    b.on_read(state(&["theirs"]), t);
    desire(&mut b, ids(&["theirs", "ours"]), BTreeSet::new(), t);
    assert_eq!(changes(b.next(t)), Some((vec![id("ours")], vec![])));
    b.on_patch(patched(&["theirs", "ours"]), t);
    desire(&mut b, BTreeSet::new(), BTreeSet::new(), t);
    let later = t + secs(3600);
    assert_eq!(changes(b.next(later)), Some((vec![], vec![id("ours")])));
}

#[test]
fn immutable_identities_are_never_removed() {
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    read_empty(&mut b, t);
    desire(&mut b, ids(&["keep"]), ids(&["keep"]), t);
    b.next(t);
    b.on_patch(patched(&["keep"]), t);
    desire(&mut b, BTreeSet::new(), ids(&["keep"]), t);
    assert!(b.releasing().is_empty());
    assert_eq!(b.next(t + secs(3600)), Step::Idle);
}

#[test]
fn adopted_identities_from_before_a_restart_are_released_when_unused() {
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    b.adopt(ids(&["old", "gone"]), t);
    desire(&mut b, ids(&["kept"]), BTreeSet::new(), t);
    assert_eq!(b.next(t), Step::Read);
    b.on_read(state(&["old", "kept"]), t);
    // `kept` is already there: no write at all for it
    assert_eq!(b.next(t), Step::WaitUntil(t + secs(60)));
    assert_eq!(
        changes(b.next(t + secs(60))),
        Some((vec![], vec![id("old")]))
    );
}

#[test]
fn a_reconcile_re_adds_an_identity_removed_by_hand() {
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    read_empty(&mut b, t);
    desire(&mut b, ids(&["a"]), BTreeSet::new(), t);
    b.next(t);
    b.on_patch(patched(&["a"]), t);
    assert_eq!(b.next(t), Step::Idle);
    b.request_reconcile();
    assert_eq!(b.next(t), Step::Read);
    b.on_read(state(&[]), t);
    assert_eq!(changes(b.next(t)), Some((vec![id("a")], vec![])));
}

#[test]
fn a_throttled_host_waits_for_retry_after() {
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    read_empty(&mut b, t);
    desire(&mut b, ids(&["a"]), BTreeSet::new(), t);
    b.next(t);
    let out = b.on_patch(
        Err(PortError::Throttled {
            retry_after: secs(17),
        }),
        t,
    );
    assert!(out.failed.is_some());
    assert_eq!(b.next(t + secs(1)), Step::WaitUntil(t + secs(17)));
    assert!(matches!(b.next(t + secs(17)), Step::Patch { .. }));
}

#[test]
fn transient_failures_back_off_exponentially() {
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    read_empty(&mut b, t);
    desire(&mut b, ids(&["a"]), BTreeSet::new(), t);
    b.next(t);
    b.on_patch(Err(PortError::Transient("503".into())), t);
    assert_eq!(b.next(t), Step::WaitUntil(t + secs(1)));
    assert_eq!(b.next(t + secs(1)), Step::Read);
    b.on_read(Err(PortError::Transient("503".into())), t + secs(1));
    assert_eq!(b.next(t + secs(1)), Step::WaitUntil(t + secs(3)));
}

fn versioned(ns: &[&str], etag: &str) -> HostIdentities {
    HostIdentities {
        user_assigned: ids(ns),
        etag: Some(etag.into()),
        ..HostIdentities::default()
    }
}

#[test]
fn a_patch_is_computed_from_the_last_answer_without_reading_again() {
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    desire(&mut b, ids(&["a"]), BTreeSet::new(), t);
    assert_eq!(b.next(t), Step::Read);
    b.on_read(Ok(versioned(&["x"], "1")), t);
    let Step::Patch { add, base, .. } = b.next(t) else {
        panic!("expected a patch")
    };
    assert_eq!((add, base), (vec![id("a")], versioned(&["x"], "1")));
    desire(&mut b, ids(&["a", "b"]), BTreeSet::new(), t);
    b.on_patch(Ok(versioned(&["a", "x"], "2").into()), t);
    // The second write goes out on the first one's answer, with its etag: no read between.
    let Step::Patch { add, base, .. } = b.next(t) else {
        panic!("expected a patch, not a read")
    };
    assert_eq!((add, base), (vec![id("b")], versioned(&["a", "x"], "2")));
}

#[test]
fn after_a_write_with_an_unknown_outcome_the_host_is_read_before_the_next_decision() {
    for unknown in [
        PortError::Transient("timeout".into()),
        PortError::Conflict("412 three times".into()),
        PortError::Fatal("400".into()),
    ] {
        let t = Instant::now();
        let mut b = HostBatch::new(settings());
        desire(&mut b, ids(&["a"]), BTreeSet::new(), t);
        b.next(t);
        b.on_read(Ok(versioned(&[], "1")), t);
        assert!(changes(b.next(t)).is_some());
        b.on_patch(Err(unknown.clone()), t);
        let later = t + secs(600);
        assert_eq!(b.next(later), Step::Read, "after {unknown:?}");
    }
}

#[test]
fn a_refused_or_throttled_write_changed_nothing_so_the_next_one_needs_no_read() {
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    desire(&mut b, ids(&["a", "bad"]), BTreeSet::new(), t);
    b.next(t);
    b.on_read(Ok(versioned(&[], "1")), t);
    b.next(t);
    b.on_patch(
        Err(PortError::Refused {
            ids: vec![id("bad")],
            message: "gone".into(),
        }),
        t,
    );
    let Step::Patch { add, base, .. } = b.next(t) else {
        panic!("expected a patch, not a read")
    };
    assert_eq!((add, base.etag), (vec![id("a")], Some("1".into())));
    b.on_patch(
        Err(PortError::Throttled {
            retry_after: secs(5),
        }),
        t,
    );
    assert_eq!(b.next(t), Step::WaitUntil(t + secs(5)));
    assert_eq!(changes(b.next(t + secs(5))), Some((vec![id("a")], vec![])));
}

#[test]
fn an_identity_already_on_the_host_is_assigned_while_another_write_is_out_unless_it_is_leaving() {
    let t = Instant::now();
    let mut b = HostBatch::new(BatchSettings {
        unassign_grace: Duration::ZERO,
        ..settings()
    });
    desire(&mut b, ids(&["mine"]), BTreeSet::new(), t);
    b.next(t);
    b.on_read(Ok(versioned(&["there"], "1")), t);
    b.next(t);
    b.on_patch(Ok(versioned(&["mine", "there"], "2").into()), t);
    // "mine" is no longer needed; its removal goes out.
    desire(&mut b, BTreeSet::new(), BTreeSet::new(), t);
    assert_eq!(changes(b.next(t)), Some((vec![], vec![id("mine")])));
    // While that PATCH is out, pods arrive for an identity already there and for the one
    // being removed: the first is assigned at once, the second only after its re-add.
    desire(&mut b, ids(&["there", "mine"]), BTreeSet::new(), t);
    assert_eq!(b.next(t), Step::Busy);
    assert_eq!(b.assigned(), ids(&["there"]));
    b.on_patch(Ok(versioned(&["there"], "3").into()), t);
    assert_eq!(changes(b.next(t)), Some((vec![id("mine")], vec![])));
}

#[test]
fn a_host_being_deleted_is_left_alone() {
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    desire(&mut b, ids(&["a"]), BTreeSet::new(), t);
    b.next(t);
    b.on_read(
        Ok(HostIdentities {
            deleting: true,
            ..HostIdentities::default()
        }),
        t,
    );
    assert_eq!(b.next(t), Step::Idle);
}

#[test]
fn one_patch_carries_at_most_150_changes() {
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    read_empty(&mut b, t);
    let many: BTreeSet<_> = (0..200).map(|i| id(&format!("i{i}"))).collect();
    desire(&mut b, many, BTreeSet::new(), t);
    let Step::Patch { add, .. } = b.next(t) else {
        panic!("expected a patch")
    };
    assert_eq!(add.len(), MAX_IDS_PER_PATCH);
    assert_eq!(b.pending(), 200);
}

#[test]
fn an_identity_the_patch_found_already_there_is_never_owned_nor_removed() {
    // MIC read the host empty; someone added identity-5 by hand before MIC's write. The port
    // reports it as preexisting (judged against the state its write applied to): not MIC's.
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    read_empty(&mut b, t);
    desire(&mut b, ids(&["five", "mine"]), BTreeSet::new(), t);
    assert_eq!(
        changes(b.next(t)),
        Some((vec![id("five"), id("mine")], vec![]))
    );
    b.on_patch(
        Ok(PatchOutcome {
            preexisting: vec![id("five")],
            ..PatchOutcome::from(state(&["five", "mine"]).unwrap())
        }),
        t,
    );
    assert_eq!(b.assigned(), ids(&["five", "mine"]));
    assert_eq!(b.owned(), &ids(&["mine"]));
    assert_eq!(b.external(), ids(&["five"]));
    // The pods leave: only MIC's own identity is removed after the grace period.
    desire(&mut b, BTreeSet::new(), BTreeSet::new(), t);
    assert_eq!(b.releasing(), ids(&["mine"]));
    let later = t + secs(61);
    assert_eq!(changes(b.next(later)), Some((vec![], vec![id("mine")])));
}

#[test]
fn a_conflict_makes_the_next_step_a_read() {
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    read_empty(&mut b, t);
    desire(&mut b, ids(&["a"]), BTreeSet::new(), t);
    b.next(t);
    b.on_patch(Err(PortError::Conflict("412".into())), t);
    let after_hold = t + secs(120);
    assert_eq!(b.next(after_hold), Step::Read);
}

/// `--update-user-msi-max-retry=2` with `--update-user-msi-retry-interval=1s`, as the original
/// retried a refused identity: two quick retries a second apart, then the longer backoff.
#[test]
fn a_refused_identity_gets_the_configured_quick_retries_before_backing_off() {
    let t = Instant::now();
    let mut b = HostBatch::new(BatchSettings {
        refused_retries: 2,
        refused_retry_interval: secs(1),
        ..settings()
    });
    read_empty(&mut b, t);
    desire(&mut b, ids(&["bad"]), BTreeSet::new(), t);
    let mut now = t;
    let mut waits = Vec::new();
    for _ in 0..4 {
        assert_eq!(changes(b.next(now)), Some((vec![id("bad")], vec![])));
        b.on_patch(
            Err(PortError::Refused {
                ids: vec![id("bad")],
                message: "LinkedAuthorizationFailed".into(),
            }),
            now,
        );
        let Step::WaitUntil(until) = b.next(now) else {
            panic!("a refused identity waits")
        };
        waits.push(until - now);
        now = until;
    }
    assert_eq!(waits, [secs(1), secs(1), secs(10), secs(20)]);
}

#[test]
fn an_identity_a_write_with_an_unknown_outcome_added_is_owned_once_a_read_finds_it() {
    // MIC's PATCH adding "mine" timed out (ARM applied it; the answer was lost). The pod goes
    // before the read. "theirs" was put on the host by someone else meanwhile, in no write of
    // MIC's: the read shows both; only "mine" is MIC's, and it is removed after the grace.
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    read_empty(&mut b, t);
    desire(&mut b, ids(&["mine"]), BTreeSet::new(), t);
    assert_eq!(changes(b.next(t)), Some((vec![id("mine")], vec![])));
    b.on_patch(Err(PortError::Transient("answer lost".into())), t);
    assert_eq!(b.maybe_owned(), &ids(&["mine"]));
    desire(&mut b, BTreeSet::new(), BTreeSet::new(), t);
    let later = t + secs(600);
    assert_eq!(b.next(later), Step::Read);
    b.on_read(state(&["mine", "theirs"]), later);
    assert!(b.maybe_owned().is_empty(), "the read settled it");
    assert_eq!(b.owned(), &ids(&["mine"]));
    assert_eq!(b.releasing(), ids(&["mine"]));
    let after_grace = later + secs(61);
    assert_eq!(
        changes(b.next(after_grace)),
        Some((vec![], vec![id("mine")]))
    );
}

#[test]
fn a_write_with_an_unknown_outcome_that_was_not_applied_leaves_nothing_owned() {
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    read_empty(&mut b, t);
    desire(&mut b, ids(&["a"]), BTreeSet::new(), t);
    b.next(t);
    b.on_patch(Err(PortError::Transient("timeout".into())), t);
    desire(&mut b, BTreeSet::new(), BTreeSet::new(), t);
    let later = t + secs(600);
    assert_eq!(b.next(later), Step::Read);
    b.on_read(state(&[]), later);
    assert!(b.maybe_owned().is_empty());
    assert!(b.owned().is_empty());
    // Someone adds "a" afterwards: it is not MIC's, and stays.
    b.request_reconcile();
    assert_eq!(b.next(later), Step::Read);
    b.on_read(state(&["a"]), later);
    assert!(b.owned().is_empty());
    assert_eq!(b.next(later + secs(600)), Step::Idle);
}

#[test]
fn a_throttled_write_leaves_its_additions_maybe_owned_until_the_next_answer() {
    // A 429 can end the retries of an attempt that went unanswered; the next PATCH's answer
    // (the retry found the identity there) settles it as MIC's.
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    read_empty(&mut b, t);
    desire(&mut b, ids(&["a"]), BTreeSet::new(), t);
    b.next(t);
    b.on_patch(
        Err(PortError::Throttled {
            retry_after: secs(1),
        }),
        t,
    );
    let later = t + secs(2);
    assert_eq!(changes(b.next(later)), Some((vec![id("a")], vec![])));
    b.on_patch(
        Ok(PatchOutcome {
            preexisting: vec![id("a")],
            ..PatchOutcome::from(state(&["a"]).unwrap())
        }),
        later,
    );
    assert_eq!(b.owned(), &ids(&["a"]));
}

#[test]
fn a_host_arm_says_does_not_exist_gets_nothing_more_and_may_be_retired() {
    for on_patch in [false, true] {
        let t = Instant::now();
        let mut b = HostBatch::new(settings());
        desire(&mut b, ids(&["a"]), BTreeSet::new(), t);
        assert_eq!(b.next(t), Step::Read);
        let gone = PortError::NotFound("ResourceNotFound".into());
        if on_patch {
            b.on_read(state(&[]), t);
            assert!(changes(b.next(t)).is_some());
            b.on_patch(Err(gone), t);
        } else {
            b.on_read(Err(gone), t);
        }
        assert!(b.gone());
        assert!(b.retirable(), "pods still want it, but it is not there");
        // No retry, however long the pods wait.
        assert_eq!(b.next(t + secs(3600)), Step::Idle);
    }
}

#[test]
fn a_host_is_retirable_once_no_pod_wants_an_identity_and_mic_holds_none_there() {
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    assert!(b.retirable(), "a host nothing was asked of");
    read_empty(&mut b, t);
    desire(&mut b, ids(&["a"]), BTreeSet::new(), t);
    assert!(!b.retirable());
    b.next(t);
    assert!(!b.retirable(), "a write is out");
    b.on_patch(patched(&["a"]), t);
    desire(&mut b, BTreeSet::new(), BTreeSet::new(), t);
    assert!(
        !b.retirable(),
        "its identity is still on the host, in its grace period"
    );
    let later = t + secs(61);
    assert_eq!(changes(b.next(later)), Some((vec![], vec![id("a")])));
    b.on_patch(patched(&[]), later);
    assert!(b.retirable());
}

#[test]
fn a_failed_first_read_of_a_host_nothing_is_wanted_on_is_not_retried_until_a_pod_needs_it() {
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    desire(&mut b, BTreeSet::new(), BTreeSet::new(), t);
    assert_eq!(b.next(t), Step::Read);
    b.on_read(Err(PortError::Fatal("403".into())), t);
    assert_eq!(b.next(t + secs(3600)), Step::Idle);
    desire(&mut b, ids(&["a"]), BTreeSet::new(), t + secs(3600));
    assert_eq!(b.next(t + secs(3600)), Step::Read);
}

#[test]
fn an_identity_is_added_only_once_an_object_recording_it_is_stored() {
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    read_empty(&mut b, t);
    b.set_desired(ids(&["a", "b"]), BTreeSet::new(), t);
    // Nothing recorded yet: nothing goes out, and nothing is owed a wake-up (the record's
    // arrival asks again).
    assert_eq!(b.next(t), Step::Idle);
    b.set_recorded(ids(&["a"]), t);
    assert_eq!(changes(b.next(t)), Some((vec![id("a")], vec![])));
    b.on_patch(patched(&["a"]), t);
    assert_eq!(b.next(t), Step::Idle);
    b.set_recorded(ids(&["a", "b"]), t);
    assert_eq!(changes(b.next(t)), Some((vec![id("b")], vec![])));
}

#[test]
fn an_identity_already_on_the_host_needs_no_record_and_no_patch() {
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    assert_eq!(b.next(t), Step::Read);
    b.on_read(state(&["theirs"]), t);
    b.set_desired(ids(&["theirs"]), BTreeSet::new(), t);
    assert_eq!(b.assigned(), ids(&["theirs"]));
    assert_eq!(b.external(), ids(&["theirs"]));
    assert_eq!(b.next(t), Step::Idle);
}

#[test]
fn an_identity_a_patch_in_flight_or_of_unknown_outcome_adds_is_releasing_once_unwanted() {
    let t = Instant::now();
    let mut b = HostBatch::new(settings());
    read_empty(&mut b, t);
    desire(&mut b, ids(&["a"]), BTreeSet::new(), t);
    assert!(changes(b.next(t)).is_some());
    // Its pod goes while the PATCH is out: its record must stay until the host is settled.
    b.set_desired(BTreeSet::new(), BTreeSet::new(), t);
    assert_eq!(b.releasing(), ids(&["a"]));
    b.on_patch(Err(PortError::Transient("timeout".into())), t);
    assert_eq!(b.releasing(), ids(&["a"]), "maybe on the host");
    let t1 = t + secs(2);
    assert_eq!(b.next(t1), Step::Read);
    b.on_read(state(&[]), t1);
    assert!(b.releasing().is_empty(), "not on the host after all");
}

#[test]
fn records_arriving_one_by_one_during_a_burst_go_out_in_one_patch() {
    let t = Instant::now();
    let mut b = HostBatch::new(BatchSettings::default());
    read_empty_slowly(&mut b, t);
    b.set_desired(ids(&["a", "b"]), BTreeSet::new(), t);
    let ms = Duration::from_millis;
    b.set_recorded(ids(&["a"]), t + ms(100));
    assert_eq!(b.next(t + ms(350)), Step::WaitUntil(t + ms(400)));
    b.set_recorded(ids(&["a", "b"]), t + ms(350));
    assert_eq!(b.next(t + ms(400)), Step::WaitUntil(t + ms(650)));
    assert_eq!(
        changes(b.next(t + ms(650))),
        Some((vec![id("a"), id("b")], vec![]))
    );
}

/// The chaos run's "pod Assigned, identity not on its scale set": a removal whose answer was
/// lost had in fact been applied, and the next pod wanting the identity was told it was there.
#[test]
fn an_identity_a_removal_with_an_unknown_outcome_may_have_taken_is_not_assigned_until_a_read() {
    for e in [
        PortError::Transient("answer lost".into()),
        PortError::Throttled {
            retry_after: secs(1),
        },
    ] {
        let t = Instant::now();
        let mut b = HostBatch::new(BatchSettings {
            unassign_grace: Duration::ZERO,
            ..settings()
        });
        read_empty(&mut b, t);
        desire(&mut b, ids(&["a"]), BTreeSet::new(), t);
        b.next(t);
        b.on_patch(patched(&["a"]), t);
        desire(&mut b, BTreeSet::new(), BTreeSet::new(), t);
        assert_eq!(changes(b.next(t)), Some((vec![], vec![id("a")])));
        b.on_patch(Err(e.clone()), t);
        // A new pod wants it again.
        desire(&mut b, ids(&["a"]), BTreeSet::new(), t);
        assert!(b.assigned().is_empty(), "{e}: maybe gone");
        let later = t + secs(2);
        assert_eq!(b.next(later), Step::Read, "{e}");
        b.on_read(state(&[]), later);
        assert!(b.assigned().is_empty());
        assert_eq!(changes(b.next(later)), Some((vec![id("a")], vec![])), "{e}");
    }
}

/// A cold start (MIC starting on a running cluster): the host's identities are wanted before
/// its first read, and their records come in one by one after it. They go out in one PATCH,
/// as soon as the last one is recorded: the wait counts from the first record, not from the
/// wish (on the old code the first record left alone at once, since the wish was older than
/// the longest wait, and the rest needed a second PATCH: 100 PATCHes for 50 scale sets at 100k
/// pods, 40 of them held back by the ARM write budget).
#[test]
fn records_arriving_after_a_cold_hosts_first_read_go_out_in_one_patch() {
    let t = Instant::now();
    let ms = Duration::from_millis;
    let mut b = HostBatch::new(BatchSettings::default());
    b.set_desired(ids(&["a", "b", "c"]), BTreeSet::new(), t);
    assert_eq!(b.next(t), Step::Read);
    // The read takes as long as a simulated scale-set read (0.5 s).
    let read = t + ms(500);
    b.on_read(state(&[]), read);
    assert_eq!(b.next(read), Step::Idle, "nothing recorded yet");
    b.set_recorded(ids(&["a"]), read + ms(100));
    assert_eq!(
        b.next(read + ms(100)),
        Step::WaitUntil(read + ms(400)),
        "waits for the rest of the records"
    );
    b.set_recorded(ids(&["a", "b"]), read + ms(150));
    assert_eq!(b.next(read + ms(150)), Step::WaitUntil(read + ms(450)));
    // The last wanted identity's record: nothing else is coming (every wish predates the
    // read), so the PATCH goes at once rather than after a pause.
    b.set_recorded(ids(&["a", "b", "c"]), read + ms(200));
    assert_eq!(
        changes(b.next(read + ms(200))),
        Some((vec![id("a"), id("b"), id("c")], vec![]))
    );
    // Once pods change what the host needs, a burst may be under way: the wait is back.
    b.on_patch(patched(&["a", "b", "c"]), read + ms(700));
    b.set_recorded(ids(&["a", "b", "c", "d"]), read + ms(800));
    b.set_desired(ids(&["a", "b", "c", "d"]), BTreeSet::new(), read + ms(800));
    assert_eq!(b.next(read + ms(800)), Step::WaitUntil(read + ms(1100)));
}

/// A wish for an identity that already has a record (another pod's object) can go out at
/// once, so it starts the wait; a removal does too, as before.
#[test]
fn a_wish_a_patch_could_carry_starts_the_wait_and_one_it_could_not_does_not() {
    let t = Instant::now() + secs(60);
    let ms = Duration::from_millis;
    let mut b = HostBatch::new(BatchSettings::default());
    read_empty_slowly(&mut b, t);
    b.set_desired(ids(&["a"]), BTreeSet::new(), t);
    assert_eq!(
        b.next(t + ms(400)),
        Step::Idle,
        "no record: nothing to wait for"
    );
    b.set_recorded(ids(&["a", "b"]), t + ms(400));
    assert_eq!(b.next(t + ms(400)), Step::WaitUntil(t + ms(700)));
    b.set_desired(ids(&["a", "b"]), BTreeSet::new(), t + ms(600));
    assert_eq!(b.next(t + ms(700)), Step::WaitUntil(t + ms(900)));
}
