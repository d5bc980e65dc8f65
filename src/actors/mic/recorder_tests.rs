use super::*;

fn applied(pod: usize) -> UserEvent {
    UserEvent::on_binding(
        ObjectKey::new("default", "b1"),
        "uid-b1",
        "Normal",
        REASON_APPLIED,
        format!("Binding b1 applied on node n0 for pod default/p{pod}"),
    )
}

fn wall() -> Timestamp {
    Timestamp::now()
}

#[test]
fn an_identical_event_bumps_the_count_of_the_one_written() {
    let mut c = Correlator::new();
    let t = Instant::now();
    let first = c.observe(&applied(0), t, wall());
    assert!(!first.update);
    assert_eq!(first.count, 1);
    let again = c.observe(&applied(0), t, wall());
    assert!(again.update);
    assert_eq!((again.name, again.count), (first.name, 2));
}

#[test]
fn from_the_tenth_distinct_message_similar_events_are_combined_into_one_growing_event() {
    let mut c = Correlator::new();
    let t = Instant::now();
    let writes: Vec<EventWrite> = (0..30).map(|p| c.observe(&applied(p), t, wall())).collect();
    // Nine Events of their own, then one combined Event whose count grows.
    let names: HashSet<&str> = writes.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names.len(), AGGREGATE_MAX_EVENTS);
    for w in &writes[..AGGREGATE_MAX_EVENTS - 1] {
        assert!(!w.update && !w.event.message.starts_with(COMBINED_PREFIX));
    }
    let combined = &writes[AGGREGATE_MAX_EVENTS - 1..];
    assert!(
        combined
            .iter()
            .all(|w| w.event.message.starts_with(COMBINED_PREFIX) && w.name == combined[0].name)
    );
    assert_eq!(combined.last().unwrap().count, 21);
    assert!(
        combined
            .last()
            .unwrap()
            .event
            .message
            .ends_with("for pod default/p29")
    );
    // Another binding's Events are not combined with these.
    let other = UserEvent {
        object: ObjectKey::new("default", "b2"),
        ..applied(99)
    };
    assert!(
        !c.observe(&other, t, wall())
            .event
            .message
            .starts_with(COMBINED_PREFIX)
    );
}

#[test]
fn similar_events_are_combined_only_within_the_interval() {
    let mut c = Correlator::new();
    let t = Instant::now();
    for p in 0..9 {
        c.observe(&applied(p), t, wall());
    }
    let later = t + AGGREGATE_INTERVAL + Duration::from_secs(1);
    let w = c.observe(&applied(100), later, wall());
    assert!(!w.event.message.starts_with(COMBINED_PREFIX));
}

#[test]
fn an_object_gets_at_most_its_burst_of_writes_then_one_per_refill() {
    let mut c = Correlator::new();
    let t = Instant::now();
    let w = c.observe(&applied(0), t, wall());
    let allowed = (0..100).filter(|_| c.allow(&w, t)).count();
    assert_eq!(allowed, SPAM_BURST as usize);
    assert!(!c.allow(&w, t + SPAM_REFILL / 2));
    assert!(c.allow(&w, t + SPAM_REFILL));
    // Another object has its own bucket.
    let other = c.observe(&applied(0).clone_onto("b2"), t, wall());
    assert!(c.allow(&other, t));
}

impl UserEvent {
    fn clone_onto(&self, binding: &str) -> Self {
        Self {
            object: ObjectKey::new("default", binding),
            ..self.clone()
        }
    }
}

#[test]
fn increments_of_a_queued_event_merge_into_its_one_write() {
    let mut c = Correlator::new();
    let mut q = Queue::default();
    let t = Instant::now();
    let mut writes = 0;
    let mut merged = 0;
    // A burst of 200 pods on one binding.
    for p in 0..200 {
        let w = c.observe(&applied(p), t, wall());
        match q.push(w, |w| c.allow(w, t)) {
            Ok(true) => merged += 1,
            Ok(false) => writes += 1,
            Err(e) => panic!("{e:?}"),
        }
        // The API answers a write while ten more Events arrive.
        if p % 10 == 0
            && let Some(w) = q.next_write()
        {
            q.done(&w.name);
        }
    }
    let mut last = None;
    while let Some(w) = q.next_write() {
        q.done(&w.name);
        last = Some(w);
    }
    assert!(writes <= 25, "{writes} writes for 200 Events");
    assert_eq!(writes + merged, 200);
    // The last write carries every increment of the combined Event.
    let last = last.unwrap();
    assert!(last.update && last.event.message.starts_with(COMBINED_PREFIX));
    assert_eq!(last.count, 191);
}

#[test]
fn a_create_still_queued_stays_a_create_and_a_write_out_is_never_doubled() {
    let mut c = Correlator::new();
    let mut q = Queue::default();
    let t = Instant::now();
    q.push(c.observe(&applied(0), t, wall()), |_| true).unwrap();
    assert_eq!(
        q.push(c.observe(&applied(0), t, wall()), |_| true),
        Ok(true)
    );
    let w = q.next_write().unwrap();
    assert!(!w.update);
    assert_eq!(w.count, 2);
    // While it is out, another increment waits behind it, as an update.
    q.push(c.observe(&applied(0), t, wall()), |_| true).unwrap();
    assert_eq!(q.next_write(), None);
    q.done(&w.name);
    let w = q.next_write().unwrap();
    assert!(w.update);
    assert_eq!(w.count, 3);
}

#[test]
fn the_queue_holds_at_most_its_limit_and_the_caches_theirs() {
    let mut c = Correlator::new();
    let mut q = Queue::default();
    let t = Instant::now();
    let mut full = 0;
    for p in 0..(MAX_QUEUED + 50) {
        let ev = UserEvent {
            object: ObjectKey::new("default", &format!("pod-{p}")),
            ..applied(p)
        };
        if q.push(c.observe(&ev, t, wall()), |w| c.allow(w, t)) == Err(Dropped::QueueFull) {
            full += 1;
        }
    }
    assert_eq!(full, 50);
    assert_eq!(q.len(), MAX_QUEUED);
    for p in 0..(3 * CACHE_ENTRIES) {
        let ev = UserEvent {
            object: ObjectKey::new("default", &format!("x-{p}")),
            ..applied(p)
        };
        let w = c.observe(&ev, t, wall());
        c.allow(&w, t);
    }
    assert!(c.cached() <= 3 * CACHE_ENTRIES, "{}", c.cached());
}

#[test]
fn the_event_object_names_its_source_and_counts() {
    let mut c = Correlator::new();
    let t = Instant::now();
    let w = c.observe(&applied(0), t, wall());
    let e = event_object(&w);
    assert!(e.metadata.name.as_deref().unwrap().starts_with("b1."));
    assert_eq!(
        e.source.as_ref().and_then(|s| s.component.as_deref()),
        Some(EVENT_SOURCE)
    );
    assert_eq!(
        e.involved_object.kind.as_deref(),
        Some("AzureIdentityBinding")
    );
    assert_eq!(e.involved_object.uid.as_deref(), Some("uid-b1"));
    assert_eq!(e.count, Some(1));
}
