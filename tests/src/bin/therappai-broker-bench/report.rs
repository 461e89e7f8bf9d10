//! The table a human reads; the JSON holds the same figures.

use serde_json::Value;

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

pub fn print_table(r: &Value) {
    let m = &r["machine"];
    println!(
        "therappai-broker benchmark ({} mode, medians of {} runs) on {} × {} (Linux {})",
        r["mode"].as_str().unwrap_or(""),
        r["repeats"],
        m["cores"],
        m["cpu_model"].as_str().unwrap_or(""),
        m["kernel"].as_str().unwrap_or("")
    );
    println!();
    let l = &r["latency"];
    println!(
        "{:<44} {:>12} {:>12} {:>8}",
        "measure", "floor", "broker", "ratio"
    );
    println!(
        "{:<44} {:>9.1} µs {:>9.1} µs {:>7.2}×",
        format!("latency p50 ({} sequential calls)", l["calls"]),
        f(&l["floor"]["p50_us"]),
        f(&l["broker"]["p50_us"]),
        f(&l["ratio_p50"])
    );
    println!(
        "{:<44} {:>9.1} µs {:>9.1} µs {:>7.2}×",
        "latency p99",
        f(&l["floor"]["p99_us"]),
        f(&l["broker"]["p99_us"]),
        f(&l["ratio_p99"])
    );
    let a = &r["authority"];
    println!(
        "{:<44} {:>9.1} µs {:>9.1} µs {:>7.2}×",
        "p50, raw HTTP/2 client, :authority localhost",
        f(&a["floor_p50_us"]),
        f(&a["localhost_p50_us"]),
        f(&a["ratio_localhost"])
    );
    println!(
        "{:<44} {:>9.1} µs {:>9.1} µs {:>7.2}×",
        "p50, same, :authority = socket path (rewritten)",
        f(&a["floor_p50_us"]),
        f(&a["socket_path_p50_us"]),
        f(&a["ratio_socket_path"])
    );
    for row in r["throughput"].as_array().into_iter().flatten() {
        println!(
            "{:<44} {:>10.0}/s {:>10.0}/s {:>7.2}×",
            format!(
                "throughput, {} callers over {} channel(s)",
                row["callers"], row["channels"]
            ),
            f(&row["floor_per_s"]),
            f(&row["broker_per_s"]),
            f(&row["ratio"])
        );
    }
    println!(
        "{:<44} {:>10.2} s {:>10.2} s {:>7.2}×",
        "CPU seconds per 100,000 tokens (64×8 load)",
        f(&r["cpu"]["floor_cpu_s_per_100k"]),
        f(&r["cpu"]["broker_cpu_s_per_100k"]),
        f(&r["cpu"]["broker_cpu_s_per_100k"]) / f(&r["cpu"]["floor_cpu_s_per_100k"])
    );
    println!();
    let i = &r["isolation"];
    println!(
        "isolation: other account's cached token while a refresh is held 500 ms: p50 {:.1} µs, p99 {:.1} µs ({} calls; without the held refresh p99 {:.1} µs)",
        f(&i["during_refresh"]["p50_us"]),
        f(&i["during_refresh"]["p99_us"]),
        i["samples"],
        f(&i["baseline"]["p99_us"])
    );
    let s = &r["stampede"];
    println!(
        "stampede: {} callers on a fresh broker: /refresh/ calls per run {}, p50 {:.1} ms, p99 {:.1} ms; one lone caller {:.1} ms (upstream latency 50 ms + TLS connect), p99 − lone = {:.1} ms",
        s["callers"],
        s["refresh_calls"],
        f(&s["p50_ms"]),
        f(&s["p99_ms"]),
        f(&s["lone_caller_ms"]),
        f(&s["p99_ms"]) - f(&s["lone_caller_ms"])
    );
    let fl = &r["fleet"];
    for row in fl["rows"].as_array().into_iter().flatten() {
        println!(
            "fleet of {:>2} broker(s) on one account (OpenBao, {} s tokens): {:>4} upstream refreshes in {} s = {:>6.0}/hour, {:.2}× the fleet of one; failed calls {}",
            row["brokers"],
            fl["access_lifetime_s"],
            row["refreshes"],
            fl["window_s"],
            f(&row["refreshes_per_hour"]),
            f(&row["ratio_to_one_broker"]),
            row["failed_calls"]
        );
    }
    println!(
        "cached GetAccessToken p50 with the vault store {:.1} µs (this run's keyutils broker: {:.1} µs)",
        f(&fl["cached_p50_us_vault"]),
        f(&r["latency"]["broker"]["p50_us"])
    );
    for row in r["stores"].as_array().into_iter().flatten() {
        println!(
            "cached GetAccessToken p50 with the {} store {:.1} µs, {:.2}× the floor (rounds interleaved with it)",
            row["store"].as_str().unwrap_or("?"),
            f(&row["p50_us"]),
            f(&row["ratio_to_floor"])
        );
    }
    let c = &r["cli"];
    println!(
        "CLI: `therappai-brokerctl token` median {:.2} ms over {} runs (starting `true` costs {:.2} ms here)",
        f(&c["token_median_ms"]),
        c["runs"],
        f(&c["true_median_ms"])
    );
    let mem = &r["memory"];
    println!(
        "daemon memory: RSS idle {:.1} MiB (own heap and stacks, RssAnon: {:.1} MiB; the rest is shared code pages), peak RSS (VmHWM) after the loads {:.1} MiB (RssAnon then {:.1} MiB)",
        f(&mem["idle_rss_kib"]) / 1024.0,
        f(&mem["idle_anon_kib"]) / 1024.0,
        f(&mem["peak_rss_kib"]) / 1024.0,
        f(&mem["after_load_anon_kib"]) / 1024.0
    );
    let by = &mem["idle_by_mapping"];
    println!(
        "daemon RSS idle by mapping: the program's file {:.1} MiB (code paged in, mostly by the kernel's fault-around), shared libraries {:.1} MiB, anonymous {:.1} MiB",
        f(&by["program_kib"]) / 1024.0,
        f(&by["libraries_kib"]) / 1024.0,
        f(&by["anonymous_kib"]) / 1024.0
    );
    print_allocator(r);
    print_peer(r);
}

/// The memory hygiene's cost per cached call (alloc_cost.rs).
fn print_allocator(r: &Value) {
    let a = &r["allocator"];
    println!(
        "zeroizing allocator: one cached call's alloc/free pattern {:.0} ns (system allocator {:.0} ns, {:.2}×); the secret arena's duplicate() of a 1 KiB token {:.0} ns (String clone {:.0} ns, {:.2}×)",
        f(&a["zeroizing_ns"]),
        f(&a["system_ns"]),
        f(&a["ratio"]),
        f(&a["arena_duplicate_ns"]),
        f(&a["string_clone_ns"]),
        f(&a["ratio_duplicate"])
    );
    println!(
        "idle-thread wipe (the vector registers and 48 KiB of stack, once per worker park): {:.0} ns; 128 KiB during or after an upstream exchange or store call: {:.0} ns",
        f(&a["idle_wipe_ns"]),
        f(&a["idle_wipe_deep_ns"])
    );
    let n = &r["normaliser"];
    println!(
        ":authority normaliser per call: {:.0} ns once the first authority was valid (passes unread); on a rewritten connection {:.0} ns with every field indexed (as grpcio sends), {:.0} ns with one Huffman-coded literal",
        f(&n["settled_ns"]),
        f(&n["rewritten_indexed_ns"]),
        f(&n["rewritten_huffman_ns"])
    );
    println!(
        ":authority normaliser per new connection: client-lib's first request ({} bytes from the preface on) passes in {:.0} ns, judged without decoding its header block; decoding that block with loona-hpack takes {:.0} ns",
        n["first_request_bytes"],
        f(&n["first_request_ns"]),
        f(&n["first_request_full_decode_ns"])
    );
}

/// The oidc-agent rows: theirs beside ours, from the same run.
fn print_peer(r: &Value) {
    let p = &r["peer"];
    println!();
    if let Some(why) = p["skipped"].as_str() {
        println!("peer oidc-agent: skipped ({why})");
        return;
    }
    println!(
        "peer: {} (Debian oidc-agent-cli) against a mock OpenID provider on loopback",
        p["version"].as_str().unwrap_or("oidc-agent")
    );
    println!(
        "{:<44} {:>12} {:>12} {:>8}",
        "measure", "oidc-agent", "broker", "ratio"
    );
    println!(
        "{:<44} {:>9.2} ms {:>9.2} ms {:>7.2}×",
        format!("CLI token, whole process ({} pairs)", p["pairs"]),
        f(&p["oidc_token_ms"]),
        f(&p["brokerctl_token_ms"]),
        f(&p["ratio_wall"])
    );
    println!(
        "{:<44} {:>9.2} ms {:>9.2} ms {:>7.2}×",
        "CLI token, CPU user+sys per run",
        f(&p["oidc_token_cpu_ms"]),
        f(&p["brokerctl_token_cpu_ms"]),
        f(&p["ratio_cpu"])
    );
    let ipc = [
        (
            "p50",
            &p["broker_new_connection"]["p50_us"],
            "new connection per call",
        ),
        (
            "p99",
            &p["broker_new_connection"]["p99_us"],
            "new connection per call",
        ),
        (
            "p50",
            &r["latency"]["broker"]["p50_us"],
            "ours on an open channel",
        ),
        (
            "p99",
            &r["latency"]["broker"]["p99_us"],
            "ours on an open channel",
        ),
    ];
    for (quantile, ours, how) in ipc {
        let theirs = f(&p["ipc"][format!("{quantile}_us")]);
        println!(
            "{:<44} {:>9.1} µs {:>9.1} µs {:>7.2}×",
            format!("cached token {quantile}, {how}"),
            theirs,
            f(ours),
            f(ours) / theirs
        );
    }
    let mem = &r["memory"];
    for (label, theirs, ours) in [
        ("daemon RSS idle (VmRSS)", "idle_rss_kib", "idle_rss_kib"),
        ("daemon RssAnon idle", "idle_anon_kib", "idle_anon_kib"),
        (
            "daemon RSS after load (ours: peak, VmHWM)",
            "after_load_rss_kib",
            "peak_rss_kib",
        ),
        (
            "daemon RssAnon after its load",
            "after_load_anon_kib",
            "after_load_anon_kib",
        ),
    ] {
        println!(
            "{:<44} {:>8.1} MiB {:>8.1} MiB {:>7.2}×",
            label,
            f(&p[theirs]) / 1024.0,
            f(&mem[ours]) / 1024.0,
            f(&mem[ours]) / f(&p[theirs])
        );
    }
    println!(
        "ratios are broker / oidc-agent; CLI ratios are medians of per-pair ratios (runs paired, order alternating; `true` takes {:.2} ms). IPC over {} calls: theirs is liboidc-agent's getAccessToken3, which connects and does a key exchange on every call (its only way); ours is client-lib. Memory: oidc-agent's two processes summed; its load is {} IPC calls, ours the 64-caller load",
        f(&p["true_ms"]),
        p["ipc"]["calls"],
        p["ipc"]["calls"]
    );
}
