//! NAT-lab TCP probe, run inside lab namespaces (see `punch_tests::natlab`).
//!
//! - `natlab_tcp serve ADDR [--max-secs S]`: prints `listening <addr>`, then answers every
//!   connection with `<peer addr>\n` (the address it sees), reads one line, closes.
//! - `natlab_tcp echo ADDR [--max-secs S]`: prints `listening <addr>`, then echoes every
//!   connection's bytes back until it closes (the service behind a peer in the punch matrix).
//! - `natlab_tcp connect ADDR [--bind ADDR] [--timeout-ms T] [--attempts N]
//!   [--retry-gap-ms G]`: dials (from a fixed local address with SO_REUSEADDR/SO_REUSEPORT if
//!   `--bind`), writes `hi <local addr>\n`, reads one line, and prints exactly one report line:
//!   `connected <attempt> <connect ms> <local addr> <line read>`, `refused <ms>`,
//!   `timeout <ms>` or `error <ms> <message>` (ms of the last attempt). Refused and timed-out
//!   attempts are retried. Two clients dialing each other make a TCP simultaneous open.
//! - `natlab_tcp stream ADDR [--max-secs S]`: connects to an echo service and for S seconds
//!   writes a byte pattern in 16 KiB pieces (about 4 MB/s) while a second thread reads the
//!   echo and checks every byte against the pattern; then half-closes, reads the rest and
//!   prints `streamed <bytes sent> <bytes checked> <ms>`, or `mismatch <offset>` /
//!   `error <message>`. A byte lost, doubled or reordered anywhere on the path shows.
//! - `natlab_tcp blast ADDR [--max-secs S]`: connects to an echo service and for S seconds
//!   writes as fast as the path takes, while a second thread reads the echo back; then reads
//!   the rest (no half-close) and prints `blasted <bytes echoed> <ms>` (throughput of the
//!   round trip through the path, both directions loaded).

use socket2::{Domain, Protocol, Socket, Type};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long to wait for the one-line exchange once connected: generous against lab delays.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections a server answers, to bound it.
const MAX_CONNS: usize = 1000;
/// Longest line accepted.
const MAX_LINE: u64 = 256;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("echo") => echo(&args[1..]),
        Some("connect") => connect(&args[1..]),
        Some("stream") => stream(&args[1..]),
        Some("blast") => blast(&args[1..]),
        _ => Err("usage: natlab_tcp serve|connect ADDR [options]".to_string()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("natlab_tcp: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Opts {
    addr: SocketAddr,
    bind: Option<SocketAddr>,
    timeout: Duration,
    attempts: u32,
    retry_gap: Duration,
    max_secs: u64,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let addr = args
        .first()
        .ok_or("missing ADDR")?
        .parse()
        .map_err(|e| format!("bad ADDR: {e}"))?;
    let mut o = Opts {
        addr,
        bind: None,
        timeout: Duration::from_secs(3),
        attempts: 1,
        retry_gap: Duration::from_millis(100),
        max_secs: 60,
    };
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |_| format!("bad value for {flag}: {v}");
        match flag.as_str() {
            "--bind" => o.bind = Some(v.parse().map_err(|_| format!("bad --bind {v}"))?),
            "--timeout-ms" => o.timeout = Duration::from_millis(v.parse().map_err(bad)?),
            "--attempts" => o.attempts = v.parse::<u32>().map_err(bad)?.clamp(1, 1000),
            "--retry-gap-ms" => o.retry_gap = Duration::from_millis(v.parse().map_err(bad)?),
            "--max-secs" => o.max_secs = v.parse().map_err(bad)?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(o)
}

/// Binds, prints `listening <addr>` and arranges for the process to exit after `--max-secs`.
fn listen_announced(args: &[String]) -> Result<(TcpListener, Duration), String> {
    let o = parse(args)?;
    let listener = TcpListener::bind(o.addr).map_err(|e| format!("bind {}: {e}", o.addr))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening {local}");
    let _ = std::io::stdout().flush();
    let max = Duration::from_secs(o.max_secs);
    std::thread::spawn(move || {
        std::thread::sleep(max);
        std::process::exit(0);
    });
    Ok((listener, max))
}

fn serve(args: &[String]) -> Result<ExitCode, String> {
    let (listener, _) = listen_announced(args)?;
    for conn in listener.incoming().take(MAX_CONNS) {
        let Ok(mut s) = conn else { continue };
        std::thread::spawn(move || {
            let peer = s.peer_addr().map(|p| p.to_string()).unwrap_or_default();
            eprintln!("accepted {peer}");
            let _ = s.set_read_timeout(Some(EXCHANGE_TIMEOUT));
            let _ = s.write_all(format!("{peer}\n").as_bytes());
            let _ = read_line(&s);
        });
    }
    Ok(ExitCode::SUCCESS)
}

fn echo(args: &[String]) -> Result<ExitCode, String> {
    let (listener, max) = listen_announced(args)?;
    for conn in listener.incoming().take(MAX_CONNS) {
        let Ok(s) = conn else { continue };
        std::thread::spawn(move || {
            let _ = s.set_read_timeout(Some(max));
            if let Ok(mut w) = s.try_clone() {
                let _ = std::io::copy(&mut &s, &mut w);
                let _ = w.shutdown(std::net::Shutdown::Write);
            }
        });
    }
    Ok(ExitCode::SUCCESS)
}

/// The pattern byte at `offset`: 251 is prime, so a shifted chunk does not match itself.
fn pattern(offset: u64) -> u8 {
    (offset % 251) as u8
}

fn stream(args: &[String]) -> Result<ExitCode, String> {
    const CHUNK: usize = 16 * 1024;
    let o = parse(args)?;
    let s = TcpStream::connect_timeout(&o.addr, o.timeout).map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(o.max_secs + 30)));
    let reader = s.try_clone().map_err(|e| e.to_string())?;
    let checker = std::thread::spawn(move || -> Result<u64, String> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        loop {
            let n = (&reader).read(&mut buf).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Ok(got);
            }
            for (i, b) in buf[..n].iter().enumerate() {
                if *b != pattern(got + i as u64) {
                    return Err(format!("mismatch {}", got + i as u64));
                }
            }
            got += n as u64;
        }
    });
    let start = Instant::now();
    let mut sent = 0u64;
    let mut chunk = vec![0u8; CHUNK];
    while start.elapsed() < Duration::from_secs(o.max_secs) {
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = pattern(sent + i as u64);
        }
        (&s).write_all(&chunk)
            .map_err(|e| format!("error write: {e}"))?;
        sent += CHUNK as u64;
        std::thread::sleep(Duration::from_millis(4));
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    match checker.join() {
        Ok(Ok(checked)) => {
            println!("streamed {sent} {checked} {}", ms(start.elapsed()));
            Ok(if checked == sent {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Ok(Err(e)) => {
            println!("{e}");
            Ok(ExitCode::FAILURE)
        }
        Err(_) => {
            println!("error checker panicked");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn blast(args: &[String]) -> Result<ExitCode, String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let o = parse(args)?;
    let s = TcpStream::connect_timeout(&o.addr, o.timeout).map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(o.max_secs + 60)));
    let reader = s.try_clone().map_err(|e| e.to_string())?;
    // What the writer sent once it stopped (u64::MAX while it writes). No half-close: through
    // a punch tunnel a stream half-closed by the far end takes at most one more window.
    let sent_total = Arc::new(AtomicU64::new(u64::MAX));
    let target = sent_total.clone();
    let counter = std::thread::spawn(move || -> Result<u64, String> {
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        while got < target.load(Ordering::Acquire) {
            let n = (&reader).read(&mut buf).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        Ok(got)
    });
    let start = Instant::now();
    let chunk = vec![0x5au8; 64 * 1024];
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(o.max_secs) {
        (&s).write_all(&chunk)
            .map_err(|e| format!("error write: {e}"))?;
        sent += chunk.len() as u64;
    }
    sent_total.store(sent, Ordering::Release);
    match counter.join() {
        Ok(Ok(got)) if got == sent => {
            println!("blasted {got} {}", ms(start.elapsed()));
            Ok(ExitCode::SUCCESS)
        }
        Ok(Ok(got)) => {
            println!("error echoed {got} of {sent} bytes");
            Ok(ExitCode::FAILURE)
        }
        Ok(Err(e)) => {
            println!("error {e}");
            Ok(ExitCode::FAILURE)
        }
        Err(_) => {
            println!("error reader panicked");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn read_line(s: &TcpStream) -> std::io::Result<String> {
    let mut line = String::new();
    BufReader::new(s.take(MAX_LINE)).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn connect(args: &[String]) -> Result<ExitCode, String> {
    let o = parse(args)?;
    let mut last = String::new();
    for attempt in 1..=o.attempts {
        if attempt > 1 {
            std::thread::sleep(o.retry_gap);
        }
        let sock = Socket::new(
            Domain::for_address(o.addr),
            Type::STREAM,
            Some(Protocol::TCP),
        )
        .map_err(|e| format!("socket: {e}"))?;
        if let Some(b) = o.bind {
            sock.set_reuse_address(true).map_err(|e| e.to_string())?;
            sock.set_reuse_port(true).map_err(|e| e.to_string())?;
            sock.bind(&b.into()).map_err(|e| format!("bind {b}: {e}"))?;
        }
        let start = Instant::now();
        let res = sock.connect_timeout(&o.addr.into(), o.timeout);
        let elapsed = start.elapsed();
        match res {
            Ok(()) => return exchange(sock, attempt, elapsed),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                last = format!("refused {}", ms(elapsed));
            }
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
                last = format!("timeout {}", ms(elapsed));
            }
            Err(e) => last = format!("error {} connect: {e}", ms(elapsed)),
        }
        eprintln!("attempt {attempt}: {last}");
    }
    println!("{last}");
    Ok(ExitCode::FAILURE)
}

fn exchange(sock: Socket, attempt: u32, elapsed: Duration) -> Result<ExitCode, String> {
    let s: TcpStream = sock.into();
    let local = s.local_addr().map_err(|e| e.to_string())?;
    let result = s
        .set_read_timeout(Some(EXCHANGE_TIMEOUT))
        .and_then(|()| (&s).write_all(format!("hi {local}\n").as_bytes()))
        .and_then(|()| read_line(&s));
    match result {
        Ok(line) if !line.is_empty() => {
            println!("connected {attempt} {} {local} {line}", ms(elapsed));
            Ok(ExitCode::SUCCESS)
        }
        Ok(_) => {
            println!("error {} connected but no reply line", ms(elapsed));
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            println!("error {} connected but exchange failed: {e}", ms(elapsed));
            Ok(ExitCode::FAILURE)
        }
    }
}
