//! A slow link is slow, and the heal makes it fast again: two namespaces of a site's network
//! ([`stillpoint_chaos::net::SiteNet`]), a TCP transfer of 128 KiB from `a` to `b` timed
//! unthrottled, through a 256 kbit/s token bucket on what `a` sends (`eth0` in its namespace),
//! through the same on what `b` receives (its bridge-side veth end), and after the heal.
//! At 256 kbit/s the 128 KiB take at least 4.1 s whatever the machine's load; unthrottled, a
//! few milliseconds. Skips (saying why) where it cannot run: not root, no `ip netns`, no `tbf`.
//!
//! Each end runs on a thread of its own that entered its namespace (`setns`), so no program
//! but this one is needed. Every wait is bounded (socket timeouts, an accept deadline).

mod common;

use common::enter;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use stillpoint_chaos::net::{self, Direction, SiteNet, Throttle};

const BYTES: usize = 128 * 1024;
const PORT: u16 = 5_555;
/// Bound on one transfer (at 256 kbit/s it takes about 4 s).
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// In `netns`, accepts `transfers` connections one after another, reads each to its end and
/// answers one byte; gives up (an error) after `IO_TIMEOUT` without a connection.
fn serve(
    netns: String,
    ip: String,
    transfers: usize,
) -> std::thread::JoinHandle<Result<(), String>> {
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        enter(&netns)?;
        let listener =
            TcpListener::bind((ip.as_str(), PORT)).map_err(|e| format!("bind {ip}: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let _ = ready_tx.send(());
        for _ in 0..transfers {
            let deadline = Instant::now() + IO_TIMEOUT;
            let mut stream = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() >= deadline {
                            return Err("no connection within the bound".into());
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(format!("accept: {e}")),
                }
            };
            stream.set_nonblocking(false).map_err(|e| e.to_string())?;
            stream
                .set_read_timeout(Some(IO_TIMEOUT))
                .map_err(|e| e.to_string())?;
            let mut got = Vec::new();
            stream
                .read_to_end(&mut got)
                .map_err(|e| format!("reading: {e}"))?;
            if got.len() != BYTES {
                return Err(format!("got {} bytes of {BYTES}", got.len()));
            }
            stream
                .write_all(b"k")
                .map_err(|e| format!("answering: {e}"))?;
        }
        Ok(())
    });
    // The listener is up before any client connects (bounded: the thread may fail first).
    let _ = ready.recv_timeout(IO_TIMEOUT);
    server
}

/// From `netns`, sends `BYTES` to `to` and waits for the answer: how long it took.
fn transfer(netns: &str, to: &str) -> Duration {
    let (ns, dest) = (netns.to_string(), to.to_string());
    std::thread::spawn(move || -> Result<Duration, String> {
        let (netns, to) = (ns, dest);
        enter(&netns)?;
        let started = Instant::now();
        let addr = format!("{to}:{PORT}")
            .parse()
            .map_err(|e| format!("{to}: {e}"))?;
        let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .map_err(|e| format!("connect {to}: {e}"))?;
        s.set_write_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        s.write_all(&vec![7u8; BYTES])
            .map_err(|e| format!("sending: {e}"))?;
        s.shutdown(std::net::Shutdown::Write)
            .map_err(|e| e.to_string())?;
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer)
            .map_err(|e| format!("waiting for the answer: {e}"))?;
        Ok(started.elapsed())
    })
    .join()
    .expect("the client thread")
    .unwrap_or_else(|e| panic!("transfer from {netns} to {to}: {e}"))
}

#[test]
fn a_throttled_link_is_slow_either_way_and_the_heal_lifts_it() {
    if let Some(why) = net::throttle_unavailable() {
        eprintln!("SKIPPED: slow links cannot be made here: {why}");
        return;
    }
    let mut site = SiteNet::create(&["a".to_string(), "b".to_string()]).expect("the network");
    let (a, b) = (
        site.node("a").expect("a").clone(),
        site.node("b").expect("b").clone(),
    );
    let server = serve(b.netns.clone(), b.ip.clone(), 4);
    let slow = Throttle {
        rate_bits_per_s: 256_000,
        burst_bytes: 4_096,
        latency_ms: 200,
    };
    // What the rate alone allows: 128 KiB at 256 kbit/s.
    let floor = Duration::from_millis((BYTES as u64 * 8 * 1000) / slow.rate_bits_per_s);

    let plain = transfer(&a.netns, &b.ip);
    site.throttle("a", Direction::Out, slow)
        .expect("throttle what a sends");
    let out = transfer(&a.netns, &b.ip);
    let out_stats = site
        .unthrottle("a", Direction::Out)
        .expect("lift")
        .expect("it was in place");
    site.throttle("b", Direction::In, slow)
        .expect("throttle what b receives");
    assert_eq!(site.throttles().len(), 1);
    let inbound = transfer(&a.netns, &b.ip);
    site.heal().expect("the heal lifts every throttle");
    assert!(site.throttles().is_empty());
    let healed = transfer(&a.netns, &b.ip);
    server
        .join()
        .expect("the server thread")
        .expect("the server");
    eprintln!(
        "128 KiB from a to b: unthrottled {plain:?}; a's out at 256 kbit/s {out:?} (queue sent {} B, dropped {} packets); b's in at 256 kbit/s {inbound:?}; healed {healed:?}; the rate allows {floor:?}",
        out_stats.sent_bytes, out_stats.dropped_packets
    );
    for (what, took) in [("a's out", out), ("b's in", inbound)] {
        assert!(
            took >= floor * 9 / 10,
            "through {what} throttled to 256 kbit/s the transfer took {took:?}, under the {floor:?} the rate allows"
        );
    }
    assert!(
        out_stats.sent_bytes >= BYTES as u64,
        "a's queue sent only {} bytes",
        out_stats.sent_bytes
    );
    for (what, took) in [("unthrottled", plain), ("after the heal", healed)] {
        assert!(
            took * 4 < floor,
            "{what} the transfer took {took:?}: not much faster than the throttled {floor:?}"
        );
    }
    // Dropping the network removes its namespaces (and the throttles' devices with them).
    drop(site);
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        !left.contains(&a.netns) && !left.contains(&b.netns),
        "namespaces left behind: {left}"
    );
}
