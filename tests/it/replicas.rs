//! Replicas: three proxy processes' worth of proxies (each its own writer, pool, spool and
//! instance id) recording into one PostgreSQL, with a client spreading the retries of each
//! trace over all three — some at the same moment. Every request must become exactly one final
//! row, and each trace's attempt numbers must be 1..n, unique and gap-free, whichever replica
//! numbered them.

use std::collections::BTreeMap;

use http::Response;

use crate::support::*;

const REPLICAS: usize = 3;
const TRACES: usize = 40;
/// Per trace: one attempt to every replica at once, then one more to each in turn.
const ATTEMPTS: usize = 2 * REPLICAS;

#[tokio::test]
async fn three_replicas_number_the_attempts_of_shared_traces_without_gaps_or_duplicates() {
    let db = TestDb::new().await;
    let up = upstream(|_req| async { Response::new(full("{\"ok\":true}")) }).await;
    let mut replicas = Vec::new();
    for _ in 0..REPLICAS {
        replicas.push(Proxy::start(&config(&db, up, "")).await);
    }
    let urls: Vec<String> = replicas
        .iter()
        .map(|p| p.url("/webhook/replicas"))
        .collect();

    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TRACES {
        let urls = urls.clone();
        tasks.spawn(async move {
            let trace = new_trace_id();
            let mut answered = Vec::new();
            // All replicas at the same moment: they race for the next numbers.
            let mut racing = tokio::task::JoinSet::new();
            for url in &urls {
                let req = post(url, &trace, r#"{"retry":true}"#);
                racing.spawn(async move { send(req).await });
            }
            while let Some(done) = racing.join_next().await {
                answered.push(done.expect("racing attempt"));
            }
            // Then one after another, starting at a different replica per trace.
            for i in 0..REPLICAS {
                let url = &urls[(t + i) % REPLICAS];
                answered.push(send(post(url, &trace, r#"{"retry":true}"#)).await);
            }
            let mut numbers: Vec<i32> = answered
                .iter()
                .map(|(parts, _)| {
                    assert_eq!(parts.status, 200);
                    parts.headers["x-attempt-number"]
                        .to_str()
                        .expect("ascii")
                        .parse()
                        .expect("number")
                })
                .collect();
            numbers.sort_unstable();
            (trace, numbers)
        });
    }
    let mut answered = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        let (trace, numbers) = done.expect("trace task");
        answered.insert(trace, numbers);
    }
    for proxy in replicas {
        proxy.stop().await;
    }

    let expected: Vec<i32> = (1..=i32::try_from(ATTEMPTS).expect("small")).collect();
    for (trace, numbers) in &answered {
        assert_eq!(numbers, &expected, "X-Attempt-Number answers of {trace}");
        let rows = db.final_rows(trace, ATTEMPTS).await;
        let mut stored: Vec<i32> = rows.iter().map(|r| r.get("attempt_number")).collect();
        stored.sort_unstable();
        assert_eq!(stored, expected, "rows of {trace}");
    }
    let totals = db
        .rows(
            "SELECT count(*), count(*) FILTER (WHERE overall_status IN ('pending', 'in_progress')),
                    count(DISTINCT proxy_instance)
             FROM communication_traces",
        )
        .await;
    assert_eq!(
        totals[0].get::<_, i64>(0),
        i64::try_from(TRACES * ATTEMPTS).expect("small"),
        "rows = requests"
    );
    assert_eq!(totals[0].get::<_, i64>(1), 0, "rows left open");
    assert_eq!(
        totals[0].get::<_, i64>(2),
        i64::try_from(REPLICAS).expect("small"),
        "every replica recorded"
    );
}
