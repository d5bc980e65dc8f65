//! The chaos scenario's judgements as plain data, with no I/O: which answers of NMI's token
//! endpoint are documented, when a pod counts as recovered after a fault, and when an identity
//! left on a scale set is a leak. [`super::chaos`] feeds them what its watches and samples saw.

/// What one answer of the token endpoint was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// 200 with an `access_token`.
    Token,
    /// An error answer the docs list (`docs/troubleshooting.md`), by its label.
    Documented(&'static str),
    /// Anything else: a status or body no doc describes, or no answer at all.
    Undocumented,
}

/// NMI's documented error answers: status, the start of the plain-text body, and a label
/// (`docs/troubleshooting.md` describes each; `docs/operations.md` lists them for chaos).
pub(super) const DOCUMENTED: [(u16, &str, &str); 9] = [
    (
        404,
        "getting assigned identities for pod ",
        "404 no Assigned identity within the wait",
    ),
    (
        503,
        "getting assigned identities for pod ",
        "503 no Assigned identity within the wait (--set-retry-after-header)",
    ),
    (
        404,
        "no pod found with IP ",
        "404 no pod of this node has the address",
    ),
    (
        500,
        "failed to match pod IP ",
        "500 several pods hold the address",
    ),
    (
        429,
        "too many token requests are already waiting for ",
        "429 waiters per pod bound",
    ),
    (
        503,
        "too many token requests are already waiting on this node",
        "503 waiters per node bound",
    ),
    (
        403,
        "failed to get service principal token for pod ",
        "403 token refused upstream",
    ),
    (
        503,
        "failed to get service principal token for pod ",
        "503 upstream unreachable",
    ),
    (
        503,
        "NMI is shutting down; retry",
        "503 NMI stopping while the request waited",
    ),
];

/// Classifies an answer: `status` 0 is no answer; `body` is the (start of the) body, or the
/// driver's note for a 200 without a token.
pub(super) fn classify(status: u16, body: Option<&str>) -> Answer {
    match (status, body) {
        (200, None) => Answer::Token,
        (0 | 200, _) => Answer::Undocumented,
        (s, b) => {
            let b = b.unwrap_or("");
            DOCUMENTED
                .iter()
                .find(|(st, prefix, _)| *st == s && b.starts_with(prefix))
                .map_or(Answer::Undocumented, |(_, _, label)| {
                    Answer::Documented(label)
                })
        }
    }
}

/// Changes of one pod's assignment as the driver saw them: (time, Assigned or not), in order.
pub(super) type Transitions = [(f64, bool)];

/// Whether the pod was Assigned at `t`.
pub(super) fn assigned_at(tr: &Transitions, t: f64) -> bool {
    tr.iter()
        .rev()
        .find(|(at, _)| *at <= t)
        .is_some_and(|x| x.1)
}

/// When one pod was whole again after a fault that ended at `end`: `end` itself if it was
/// Assigned then, else the first time after `end` it became Assigned; `None` if it never did.
pub(super) fn pod_recovered(tr: &Transitions, end: f64) -> Option<f64> {
    if assigned_at(tr, end) {
        return Some(end);
    }
    tr.iter().find(|(at, a)| *at > end && *a).map(|x| x.0)
}

/// Recovery after a fault ending at `end`, over the bound pods that were Running then and
/// lived on: (seconds after `end` until the last of them was Assigned, pods still unassigned
/// when the run ended). A pod that finished before it was Assigned is not counted.
pub(super) fn recovery<'a>(
    pods: impl IntoIterator<Item = (&'a Transitions, Option<f64>)>,
    end: f64,
) -> (f64, usize) {
    let (mut last, mut never) = (end, 0);
    for (tr, finished) in pods {
        match pod_recovered(tr, end) {
            Some(t) if finished.is_none_or(|f| t <= f) => last = last.max(t),
            Some(_) => {}
            None if finished.is_some() => {}
            None => never += 1,
        }
    }
    (last - end, never)
}

/// When an identity still on a scale set becomes a leak: once the grace period plus the
/// margin have passed since both the last pod that needed it there and the faults' end (an
/// identity nobody needed since the faults stopped is judged from then).
pub(super) fn leak_deadline(last_needed: Option<f64>, calm_from: f64, allowance: f64) -> f64 {
    last_needed.unwrap_or(f64::NEG_INFINITY).max(calm_from) + allowance
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_documented_error_answers_pass_and_no_answer_never_does() {
        assert_eq!(classify(200, None), Answer::Token);
        assert_eq!(
            classify(200, Some("200 without an access_token")),
            Answer::Undocumented
        );
        assert_eq!(
            classify(
                404,
                Some(
                    "getting assigned identities for pod default/a in ASSIGNED state failed after 10s: x"
                )
            ),
            Answer::Documented("404 no Assigned identity within the wait")
        );
        assert_eq!(
            classify(
                503,
                Some("failed to get service principal token for pod p: t")
            ),
            Answer::Documented("503 upstream unreachable")
        );
        // The right words with the wrong status, a bare 502, no answer: undocumented.
        assert_eq!(
            classify(500, Some("no pod found with IP 1.2.3.4 on node n")),
            Answer::Undocumented
        );
        assert_eq!(classify(502, Some("bad gateway")), Answer::Undocumented);
        assert_eq!(classify(0, Some("connection reset")), Answer::Undocumented);
    }

    #[test]
    fn a_pod_recovers_when_it_is_assigned_again_after_the_fault() {
        let tr = [(1.0, true), (5.0, false), (9.0, true)];
        assert!(assigned_at(&tr, 4.0) && !assigned_at(&tr, 6.0) && !assigned_at(&tr, 0.5));
        assert_eq!(pod_recovered(&tr, 4.0), Some(4.0));
        assert_eq!(pod_recovered(&tr, 6.0), Some(9.0));
        assert_eq!(pod_recovered(&[(1.0, false)], 6.0), None);
        // The slowest pod sets the recovery; one never assigned is counted apart; one that
        // finished unassigned is not counted at all.
        let slow = [(7.0, true)];
        let never: [(f64, bool); 0] = [];
        let (after, unassigned) = recovery(
            [
                (&tr[..], None),
                (&slow[..], None),
                (&never[..], None),
                (&never[..], Some(6.5)),
            ],
            6.0,
        );
        assert_eq!((after, unassigned), (3.0, 1));
    }

    #[test]
    fn a_leak_is_judged_from_the_later_of_the_last_need_and_the_calm() {
        assert_eq!(leak_deadline(Some(50.0), 40.0, 8.0), 58.0);
        assert_eq!(leak_deadline(Some(10.0), 40.0, 8.0), 48.0);
        assert_eq!(leak_deadline(None, 40.0, 8.0), 48.0);
    }
}
