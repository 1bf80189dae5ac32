//! template.yaml's time limits against the one rule that derives them
//! (`ferry_core::timing`): the functions' `Timeout` and every drained queue's
//! `VisibilityTimeout`. A text check (CloudFormation's tags are not plain YAML); the full
//! policy checks are tests/deploy.

use ferry_core::timing::{FUNCTION_TIMEOUT_SECS, VISIBILITY_TIMEOUT_SECS};

fn template() -> String {
    let path = format!("{}/../../template.yaml", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The numbers after `key:` on every line where it is the whole key.
fn values(text: &str, key: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix(':'))
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{key}: {v:?} is not a number of seconds"))
        })
        .collect()
}

#[test]
fn the_function_timeout_is_the_rules() {
    let timeouts = values(&template(), "Timeout");
    // One, in Globals: no function overrides it.
    assert_eq!(
        timeouts,
        vec![FUNCTION_TIMEOUT_SECS],
        "template Timeout lines"
    );
}

#[test]
fn every_drained_queue_hides_a_message_for_six_function_timeouts() {
    let text = template();
    let visibility = values(&text, "VisibilityTimeout");
    let functions = text.matches("Type: AWS::Serverless::Function").count();
    assert!(functions >= 5, "{functions} functions");
    // One drained queue per function a queue feeds (the reconciler runs on a schedule), each
    // with the rule's visibility timeout.
    let scheduled = text.matches("Type: ScheduleV2").count();
    assert_eq!(scheduled, 1, "the reconciler's schedule");
    assert_eq!(visibility.len(), functions - scheduled);
    assert!(
        visibility.iter().all(|v| *v == VISIBILITY_TIMEOUT_SECS),
        "{visibility:?} != {VISIBILITY_TIMEOUT_SECS}"
    );
}

#[test]
fn the_value_scan_finds_what_it_should() {
    let text = "  Timeout: 60\n  VisibilityTimeout: 360\n  TimeoutInMinutes: 60\n";
    assert_eq!(values(text, "Timeout"), vec![60]);
    assert_eq!(values(text, "VisibilityTimeout"), vec![360]);
}
