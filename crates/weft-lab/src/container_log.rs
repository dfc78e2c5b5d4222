//! Containers' logs as containerd writes them and the kubelet reads them: the CRI log format,
//! one file per container instance, rotation, and reading with `kubectl logs`' options.
//!
//! A line of a log file is `<RFC 3339 time, nanoseconds> <stdout|stderr> <F|P> <content>`: `F`
//! ends a line of the container's output, `P` is a part of a longer one (over [`MAX_LINE`], or
//! output that ended without a newline), as containerd writes them. The time lets `--since` and
//! `--timestamps` work per line.
//!
//! Layout, in the pod's directory: `logs/<container>/<instance>.log`, where the instance is the
//! container's restart count when it started (as the kubelet's `/var/log/pods/.../<n>.log`), and
//! `<instance>.log.1`, the rotated older part of the same instance (rotated at [`LOG_LIMIT`]).
//! When an instance starts, only the one before it is kept (`--previous`).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use weft_apiserver::pod_logs::{LogOptions, LogStream};

/// Longer output lines are split into partial (`P`) entries of this size (containerd's).
pub const MAX_LINE: usize = 16 << 10;
/// A log file is rotated at this size (the kubelet's default `containerLogMaxSize`); the
/// rotated part of the instance is kept as `.log.1`.
pub const LOG_LIMIT: u64 = 10 << 20;

/// Which of the container's output streams a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The directory of one container's logs.
pub fn container_dir(pod_dir: &Path, container: &str) -> PathBuf {
    pod_dir.join("logs").join(container)
}

/// The log file of one instance of a container.
pub fn instance_path(pod_dir: &Path, container: &str, instance: u32) -> PathBuf {
    container_dir(pod_dir, container).join(format!("{instance}.log"))
}

/// The instances of a container that have a log, oldest first.
pub fn instances(pod_dir: &Path, container: &str) -> Vec<u32> {
    let Ok(rd) = fs::read_dir(container_dir(pod_dir, container)) else { return vec![] };
    let mut out: Vec<u32> =
        rd.flatten().filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok()).collect();
    out.sort_unstable();
    out
}

/// Writes one container instance's log. Shared by the stdout and stderr pumps: each entry is
/// one `write` under the lock, so lines of the two streams never interleave within a line.
pub struct Writer {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl Writer {
    /// Opens the log of a new instance; the logs of instances before the previous one go.
    pub fn open(pod_dir: &Path, container: &str, instance: u32) -> Writer {
        let dir = container_dir(pod_dir, container);
        let _ = fs::create_dir_all(&dir);
        for old in instances(pod_dir, container).into_iter().filter(|i| i + 1 < instance) {
            let p = instance_path(pod_dir, container, old);
            let _ = fs::remove_file(p.with_extension("log.1"));
            let _ = fs::remove_file(p);
        }
        let path = instance_path(pod_dir, container, instance);
        let file = OpenOptions::new().create(true).append(true).open(&path).ok();
        Writer { path, file: Mutex::new(file) }
    }

    /// Appends one entry (`content` holds no newline): a whole line, or part of one.
    pub fn entry(&self, stream: Stream, partial: bool, content: &[u8]) {
        let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.fZ").to_string();
        let mut line = Vec::with_capacity(now.len() + content.len() + 12);
        line.extend_from_slice(now.as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream.as_str().as_bytes());
        line.extend_from_slice(if partial { b" P " } else { b" F " });
        line.extend_from_slice(content);
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if file.as_ref().and_then(|f| f.metadata().ok()).is_some_and(|m| m.len() > LOG_LIMIT) {
            let _ = fs::rename(&self.path, self.path.with_extension("log.1"));
            *file = OpenOptions::new().create(true).append(true).open(&self.path).ok();
        }
        if let Some(f) = file.as_mut() {
            let _ = f.write_all(&line);
        }
    }

    /// A message of the runtime's own (e.g. a command that could not start), on stderr.
    pub fn message(&self, text: &str) {
        for l in text.lines() {
            self.entry(Stream::Stderr, false, l.as_bytes());
        }
    }

    /// Copies a container's output stream into the log, line by line, until it closes.
    pub fn pump(&self, stream: Stream, mut from: impl Read) {
        let mut buf = vec![0u8; 16 << 10];
        let mut line: Vec<u8> = Vec::new();
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                match rest.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        line.extend_from_slice(&rest[..i]);
                        self.flush_long(stream, &mut line);
                        self.entry(stream, false, &line);
                        line.clear();
                        rest = &rest[i + 1..];
                    }
                    None => {
                        line.extend_from_slice(rest);
                        rest = &[];
                    }
                }
                // A line longer than MAX_LINE is written in parts as it comes.
                if line.len() > MAX_LINE {
                    self.flush_long(stream, &mut line);
                }
            }
        }
        // Output that ended without a newline is a partial line, as containerd writes it.
        if !line.is_empty() {
            self.flush_long(stream, &mut line);
            self.entry(stream, true, &line);
        }
    }

    /// Writes whole MAX_LINE parts of `line` as partial entries, keeping the rest.
    fn flush_long(&self, stream: Stream, line: &mut Vec<u8>) {
        while line.len() > MAX_LINE {
            self.entry(stream, true, &line[..MAX_LINE]);
            line.drain(..MAX_LINE);
        }
    }
}

/// One entry of a log file.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub time: jiff::Timestamp,
    pub stream: Stream,
    pub partial: bool,
    pub content: &'a [u8],
}

/// Parses one line of a log file (without its newline). `None` for a line that is not in the
/// format (the kubelet skips those too).
pub fn parse(line: &[u8]) -> Option<Entry<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?.parse::<jiff::Timestamp>().ok()?;
    let stream = match parts.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let partial = match parts.next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    Some(Entry { time, stream, partial, content: parts.next().unwrap_or(b"") })
}

/// Formats an entry as `kubectl logs` shows it: the content, a newline after a whole line, and
/// with `timestamps` the time first (RFC 3339 with nine digits, as the kubelet writes it).
fn render(e: &Entry<'_>, timestamps: bool, out: &mut Vec<u8>) {
    if timestamps {
        out.extend_from_slice(e.time.strftime("%Y-%m-%dT%H:%M:%S.%NZ").to_string().as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(e.content);
    if !e.partial {
        out.push(b'\n');
    }
}

/// Whether the instance being followed may still write (its container runs), asked when the
/// log has nothing new.
pub type StillWriting = Box<dyn FnMut() -> bool + Send>;

/// Reads one container instance's log (its rotated part, then its file) with the options:
/// `tail_lines`, `since`, `timestamps`, `follow` (`limit_bytes` is the API server's).
pub struct Reader {
    /// Files still to read, in order, with the offset to start at.
    files: VecDeque<(PathBuf, u64)>,
    cur: Option<(BufReader<File>, PathBuf, u64)>,
    /// An incomplete line at the end of the file (a write in progress).
    pending: Vec<u8>,
    opts: LogOptions,
    still_writing: Option<StillWriting>,
    /// After the container ended: read to the end once more, then stop.
    draining: bool,
}

/// What a read of the file ended with.
enum Got {
    Data,
    Eof,
}

impl Reader {
    /// A reader of `path` (the instance's log), following it while `still_writing` says so.
    pub fn new(path: &Path, opts: LogOptions, still_writing: Option<StillWriting>) -> std::io::Result<Reader> {
        let rotated = path.with_extension("log.1");
        let mut files: VecDeque<(PathBuf, u64)> = VecDeque::new();
        if rotated.exists() {
            files.push_back((rotated, 0));
        }
        files.push_back((path.to_path_buf(), 0));
        if let Some(n) = opts.tail_lines {
            files = tail_start(files, n)?;
        }
        let still_writing = if opts.follow { still_writing } else { None };
        Ok(Reader { files, cur: None, pending: vec![], opts, still_writing, draining: false })
    }

    /// Reads up to `max` bytes of formatted output from the files as they are now.
    fn read_some(&mut self, out: &mut Vec<u8>, max: usize) -> std::io::Result<Got> {
        loop {
            if self.cur.is_none() {
                let Some((path, offset)) = self.files.pop_front() else { return Ok(Got::Eof) };
                match File::open(&path) {
                    Ok(mut f) => {
                        f.seek(SeekFrom::Start(offset))?;
                        let ino = f.metadata()?.ino();
                        self.cur = Some((BufReader::with_capacity(64 << 10, f), path, ino));
                    }
                    // A rotated part that went meanwhile: nothing to read there.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            }
            let (r, path, ino) = self.cur.as_mut().expect("opened above");
            let mut line = std::mem::take(&mut self.pending);
            let n = r.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                // The end of this file for now. A later file (or a rotation) means it is done.
                self.pending = line;
                let rotated = fs::metadata(&*path).map(|m| m.ino() != *ino).unwrap_or(true);
                if !self.files.is_empty() || (rotated && self.opts.follow) {
                    if rotated && self.files.is_empty() {
                        // The followed file was rotated away: go on with the new one.
                        self.files.push_back((path.clone(), 0));
                    }
                    self.cur = None;
                    self.pending.clear();
                    continue;
                }
                return Ok(if out.is_empty() { Got::Eof } else { Got::Data });
            }
            line.pop();
            if let Some(e) = parse(&line)
                && self.opts.since.is_none_or(|s| e.time >= s)
            {
                render(&e, self.opts.timestamps, out);
            }
            if out.len() >= max {
                return Ok(Got::Data);
            }
        }
    }
}

impl LogStream for Reader {
    fn next_chunk(&mut self, wait: Duration) -> std::io::Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + wait;
        let mut out = vec![];
        loop {
            if let Got::Data = self.read_some(&mut out, 32 << 10)? {
                return Ok(Some(out));
            }
            if !out.is_empty() {
                return Ok(Some(out));
            }
            if self.draining {
                return Ok(None);
            }
            match self.still_writing.as_mut() {
                None => return Ok(None),
                Some(still) => {
                    if !still() {
                        // Whatever it wrote before it ended is read once more, then the end.
                        self.draining = true;
                        continue;
                    }
                }
            }
            if Instant::now() >= deadline {
                return Ok(Some(vec![]));
            }
            std::thread::sleep(Duration::from_millis(100).min(deadline.saturating_duration_since(Instant::now())));
        }
    }
}

/// Where the last `n` lines of the files start (the kubelet counts lines of the file, partial
/// entries included).
fn tail_start(files: VecDeque<(PathBuf, u64)>, n: usize) -> std::io::Result<VecDeque<(PathBuf, u64)>> {
    if n == 0 {
        // Nothing of what is there now; a follow still gets what comes next.
        return Ok(files
            .into_iter()
            .last()
            .map(|(p, _)| {
                let len = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                (p, len)
            })
            .into_iter()
            .collect());
    }
    // The start offsets of the last n lines, across the files.
    let mut starts: VecDeque<(usize, u64)> = VecDeque::with_capacity(n.min(1 << 16));
    for (i, (path, _)) in files.iter().enumerate() {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut r = BufReader::with_capacity(64 << 10, f);
        let mut at = 0u64;
        let mut line = vec![];
        loop {
            line.clear();
            let got = r.read_until(b'\n', &mut line)?;
            if got == 0 || line.last() != Some(&b'\n') {
                break;
            }
            if starts.len() == n {
                starts.pop_front();
            }
            starts.push_back((i, at));
            at += got as u64;
        }
    }
    let Some(&(first, offset)) = starts.front() else { return Ok(files) };
    Ok(files
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i >= first)
        .map(|(i, (p, o))| if i == first { (p, offset) } else { (p, o) })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_apiserver::pod_logs::read_all;

    fn read(path: &Path, opts: LogOptions) -> String {
        let r = Reader::new(path, opts, None).unwrap();
        String::from_utf8(read_all(Box::new(r), 1 << 30).unwrap()).unwrap()
    }

    #[test]
    fn lines_are_written_in_the_cri_format_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let w = Writer::open(dir.path(), "c", 0);
        w.pump(Stream::Stdout, &b"one\ntwo\n\nno newline"[..]);
        w.pump(Stream::Stderr, &b"err\n"[..]);
        let path = instance_path(dir.path(), "c", 0);
        let raw = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = raw.lines().collect();
        assert_eq!(lines.len(), 5, "{raw}");
        let e = parse(lines[0].as_bytes()).unwrap();
        assert_eq!((e.stream, e.partial, e.content), (Stream::Stdout, false, &b"one"[..]));
        assert!(lines[2].ends_with(" stdout F "), "an empty line keeps its entry: {}", lines[2]);
        assert!(lines[3].ends_with(" stdout P no newline"), "{}", lines[3]);
        assert!(lines[4].contains(" stderr F err"));
        // Served as written: partial entries get no newline.
        assert_eq!(read(&path, LogOptions::default()), "one\ntwo\n\nno newlineerr\n");
    }

    #[test]
    fn long_lines_are_split_into_partial_entries_and_joined_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let w = Writer::open(dir.path(), "c", 0);
        let long = "x".repeat(MAX_LINE * 2 + 5);
        w.pump(Stream::Stdout, format!("{long}\nshort\n").as_bytes());
        let path = instance_path(dir.path(), "c", 0);
        let raw = fs::read_to_string(&path).unwrap();
        assert_eq!(raw.lines().filter(|l| l.contains(" P ")).count(), 2);
        assert_eq!(read(&path, LogOptions::default()), format!("{long}\nshort\n"));
    }

    #[test]
    fn options_tail_since_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let path = instance_path(dir.path(), "c", 0);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(
            &path,
            "2026-01-01T00:00:01.5Z stdout F a\n\
             garbage line\n\
             2026-01-01T00:00:02Z stderr F b\n\
             2026-01-01T00:00:03.000000001Z stdout F c\n",
        )
        .unwrap();
        assert_eq!(read(&path, LogOptions::default()), "a\nb\nc\n");
        let tail = |n| LogOptions { tail_lines: Some(n), ..Default::default() };
        assert_eq!(read(&path, tail(2)), "b\nc\n");
        assert_eq!(read(&path, tail(0)), "");
        assert_eq!(read(&path, tail(100)), "a\nb\nc\n");
        let since = LogOptions { since: Some("2026-01-01T00:00:02Z".parse().unwrap()), ..Default::default() };
        assert_eq!(read(&path, since), "b\nc\n");
        let ts = LogOptions { timestamps: true, tail_lines: Some(1), ..Default::default() };
        assert_eq!(read(&path, ts), "2026-01-01T00:00:03.000000001Z c\n");
        let ts = LogOptions { timestamps: true, tail_lines: Some(3), ..Default::default() };
        assert!(read(&path, ts).starts_with("2026-01-01T00:00:02.000000000Z b\n"));
    }

    #[test]
    fn rotation_keeps_the_older_part_of_the_instance() {
        let dir = tempfile::tempdir().unwrap();
        let w = Writer::open(dir.path(), "c", 0);
        let line = "y".repeat(1000);
        let count = (LOG_LIMIT / 1000) as usize + 100;
        for _ in 0..count {
            w.entry(Stream::Stdout, false, line.as_bytes());
        }
        let path = instance_path(dir.path(), "c", 0);
        assert!(path.with_extension("log.1").exists());
        let all = read(&path, LogOptions::default());
        assert_eq!(all.lines().count(), count);
        // The tail reaches across the two files.
        let t = LogOptions { tail_lines: Some(150), ..Default::default() };
        assert_eq!(read(&path, t).lines().count(), 150);
    }

    #[test]
    fn a_new_instance_keeps_only_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..4 {
            Writer::open(dir.path(), "c", i).entry(Stream::Stdout, false, format!("run {i}").as_bytes());
        }
        assert_eq!(instances(dir.path(), "c"), vec![2, 3]);
        assert_eq!(read(&instance_path(dir.path(), "c", 2), LogOptions::default()), "run 2\n");
    }

    #[test]
    fn a_follow_gets_new_lines_and_ends_with_the_container() {
        let dir = tempfile::tempdir().unwrap();
        let w = std::sync::Arc::new(Writer::open(dir.path(), "c", 0));
        w.entry(Stream::Stdout, false, b"first");
        let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let r2 = running.clone();
        let opts = LogOptions { follow: true, ..Default::default() };
        let mut r = Reader::new(
            &instance_path(dir.path(), "c", 0),
            opts,
            Some(Box::new(move || r2.load(std::sync::atomic::Ordering::SeqCst))),
        )
        .unwrap();
        assert_eq!(r.next_chunk(Duration::from_millis(50)).unwrap().unwrap(), b"first\n");
        assert_eq!(r.next_chunk(Duration::from_millis(50)).unwrap().unwrap(), b"");
        w.entry(Stream::Stdout, false, b"second");
        assert_eq!(r.next_chunk(Duration::from_millis(50)).unwrap().unwrap(), b"second\n");
        // The container writes its last line and ends: the line comes, then the end.
        w.entry(Stream::Stdout, false, b"last");
        running.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut rest = vec![];
        while let Some(c) = r.next_chunk(Duration::from_millis(50)).unwrap() {
            rest.extend(c);
        }
        assert_eq!(rest, b"last\n");
    }

    #[test]
    fn parse_refuses_what_is_not_an_entry() {
        for bad in [&b""[..], b"x", b"2026-01-01T00:00:00Z", b"2026-01-01T00:00:00Z stdin F x", b"nottime stdout F x"] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
        assert_eq!(parse(b"2026-01-01T00:00:00Z stdout F").unwrap().content, b"");
    }
}
