//! Property tests (proptest) on every parser of outside input: arbitrary
//! input never panics, and it gives a clear error or a value that
//! round-trips. Kernel-log records, Redis and Sentinel URLs, cgroup paths,
//! the web config, the DLQ API's query parameters, and the job frameworks'
//! times and listed jobs. The Prometheus text sums are in
//! `src/collectors/health/check.rs`'s unit tests (the module is private).

use proptest::prelude::*;

use inferwatch::xid::kmsg::{parse_record, parse_xid, Found, Splitter, MAX_RECORD};

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_kernel_log_line_parses_or_is_refused(line in ".{0,300}") {
        if let Some(r) = parse_record(&line) {
            prop_assert!(line.ends_with(r.message));
        }
        let _ = parse_xid(&line);
    }

    #[test]
    fn a_kernel_record_round_trips(pri in 0u32..200, seq: u64, usec: u64, message in "[^\n]{0,200}") {
        let line = format!("{pri},{seq},{usec},-;{message}");
        let r = parse_record(&line).expect("a record");
        prop_assert_eq!((r.seq, r.usec, r.message), (seq, usec, message.as_str()));
    }

    #[test]
    fn an_xid_line_round_trips(domain in 0u32..0x10000, bus in 0u32..0x100, dev in 0u32..0x20, xid in 0u64..100_000) {
        let pci = format!("{domain:04x}:{bus:02x}:{dev:02x}");
        let line = format!("NVRM: Xid (PCI:{pci}): {xid}, pid=1234, name=python, Ch 00000008");
        match parse_xid(&line) {
            Some(Found::Xid { pci: p, xid: x }) => {
                prop_assert_eq!(x, xid);
                prop_assert_eq!(Some(p), inferwatch::xid::PciAddr::parse(&pci));
            }
            other => prop_assert!(false, "{line}: {other:?}"),
        }
    }

    #[test]
    fn any_byte_stream_splits_without_holding_more_than_a_record(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..5000), 0..20)) {
        let mut s = Splitter::default();
        for c in &chunks {
            s.feed(c, |r| { let _ = parse_xid(r.message); });
            // What is held between feeds is at most one record's worth.
            prop_assert!(s.held() <= MAX_RECORD, "{} bytes held", s.held());
        }
    }

    #[test]
    fn any_redis_url_is_a_target_or_an_error(url in ".{0,120}") {
        let _ = inferwatch::redis_conn::target(&url, None, None);
    }

    #[test]
    fn a_redis_and_a_sentinel_url_are_targets(port in 1u16.., db in 0u8..16, name in "[a-z][a-z0-9_]{0,20}", n in 1usize..4) {
        let direct = format!("redis://127.0.0.1:{port}/{db}");
        prop_assert!(inferwatch::redis_conn::target(&direct, None, None).is_ok(), "{}", direct);
        let hosts: Vec<String> = (0..n).map(|i| format!("127.0.0.{}:{}", i + 1, port)).collect();
        let sentinel = format!("redis+sentinel://{}/{name}/{db}", hosts.join(","));
        prop_assert!(inferwatch::redis_conn::target(&sentinel, None, None).is_ok(), "{}", sentinel);
    }

    #[test]
    fn any_cgroup_text_parses(text in "(.{0,80}\n){0,6}") {
        let _ = inferwatch::attribution::cgroup::parse(&text);
    }

    #[test]
    fn a_docker_cgroup_path_names_its_container(id in "[0-9a-f]{64}", v2: bool) {
        let text = if v2 {
            format!("0::/system.slice/docker-{id}.scope\n")
        } else {
            format!("1:name=systemd:/docker/{id}\n")
        };
        let info = inferwatch::attribution::cgroup::parse(&text);
        prop_assert_eq!(info.container.map(|(_, c)| c), Some(id));
    }

    #[test]
    fn rq_times_parse_or_are_refused(text in ".{0,40}") {
        let _ = inferwatch::dlq::parse_rq_time(&text);
    }

    #[test]
    fn an_rq_time_round_trips(secs in 0i64..4_000_000_000, micros in 0u32..1_000_000) {
        let t = chrono::DateTime::from_timestamp(secs, micros * 1000).unwrap();
        let text = t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let back = inferwatch::dlq::parse_rq_time(&text).unwrap();
        prop_assert!((back - (secs as f64 + micros as f64 / 1e6)).abs() < 1e-5, "{} {}", text, back);
    }

    #[test]
    fn any_listed_framework_job_is_matched_or_not_without_panic(error in ".{0,60}", at in ".{0,40}", attempts in prop::option::of(any::<i64>()), needle in ".{0,10}") {
        let job = serde_json::json!({"error": error, "last_failed_at": at, "attempt_count": attempts});
        let filter = inferwatch::dlq::Filter { error: Some(needle.to_lowercase()), older_than: Some(1.0), min_attempts: Some(1), ..Default::default() };
        let _ = inferwatch::dlq::matches_listed(&filter, &job, 1.8e9);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_web_config_loads_or_names_what_is_wrong(text in "([a-z_]{1,20}:( .{0,30})?\n){0,8}") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yml");
        std::fs::write(&path, &text).unwrap();
        if let Err(e) = inferwatch::webconf::load(&path) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}
