//! Batched datagram I/O for the drivers: on Linux one `recvmmsg` reads up to
//! [`BATCH_DATAGRAMS_MAX`] datagrams and one `sendmmsg` writes up to as many, each into or
//! from buffers allocated once; elsewhere (or if the kernel refuses the calls with `ENOSYS`)
//! the same types fall back to one `recv_from`/`send_to` per datagram. Part of the driver:
//! it touches sockets and nothing else, and makes no protocol decision.
//!
//! Not here: segmentation offload. UDP GSO (`UDP_SEGMENT`) only helps when many equal-size
//! datagrams go to one destination; the server sends about one datagram per client per tick
//! to as many different addresses, which is what `sendmmsg` batches.

use std::io;
use std::net::SocketAddr;

use mio::net::UdpSocket;

use crate::proto::MTU_BYTES;

/// Datagrams moved by one batched system call, each way.
pub const BATCH_DATAGRAMS_MAX: usize = 64;
/// Size of each receive buffer: larger than the MTU so an oversized datagram is seen as
/// oversized (and refused by the protocol) rather than silently cut to a valid size.
pub const RECV_DATAGRAM_BYTES_MAX: usize = 2048;

/// Which system calls a batch uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchMode {
    /// `recvmmsg`/`sendmmsg` (Linux only).
    Mmsg,
    /// One `recv_from`/`send_to` per datagram (portable).
    PerDatagram,
}

impl BatchMode {
    /// The best mode this platform supports.
    pub fn best() -> Self {
        if cfg!(target_os = "linux") {
            Self::Mmsg
        } else {
            Self::PerDatagram
        }
    }
}

/// Up to [`BATCH_DATAGRAMS_MAX`] received datagrams, read by [`Self::recv`] from a
/// non-blocking socket; its buffers (128 KiB) are allocated once.
pub struct RecvBatch {
    mode: BatchMode,
    bufs: Box<[[u8; RECV_DATAGRAM_BYTES_MAX]; BATCH_DATAGRAMS_MAX]>,
    lens: [usize; BATCH_DATAGRAMS_MAX],
    addrs: [Option<SocketAddr>; BATCH_DATAGRAMS_MAX],
    n: usize,
    /// The socket's kernel drop count, as of the newest datagram that carried it.
    socket_drops: Option<u32>,
    /// Source addresses written by `recvmmsg`; kept so they are not zeroed on every call.
    #[cfg(target_os = "linux")]
    names: Box<[libc::sockaddr_storage; BATCH_DATAGRAMS_MAX]>,
    /// Ancillary data of each datagram (room for one `SO_RXQ_OVFL` count), 8-aligned.
    #[cfg(target_os = "linux")]
    controls: Box<[[u64; CONTROL_WORDS]; BATCH_DATAGRAMS_MAX]>,
}

/// Words of ancillary data room per datagram: a `cmsghdr` and one u32, aligned.
#[cfg(target_os = "linux")]
const CONTROL_WORDS: usize = 4;

/// Asks the kernel to attach to received datagrams the count of datagrams it dropped
/// at `socket` (its receive buffer was full) since the socket was created
/// (`SO_RXQ_OVFL`, Linux): [`RecvBatch::socket_drops`] then reports it. A no-op
/// elsewhere.
///
/// # Errors
/// The `setsockopt` error.
pub fn count_socket_drops(socket: &impl std::os::fd::AsRawFd) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let on: libc::c_int = 1;
        // SAFETY: a valid fd and a c_int option value of the size passed.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RXQ_OVFL,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
    Ok(())
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new(BatchMode::best())
    }
}

impl RecvBatch {
    /// An empty batch using `mode` ([`BatchMode::Mmsg`] is taken as
    /// [`BatchMode::PerDatagram`] off Linux).
    pub fn new(mode: BatchMode) -> Self {
        let mode = if cfg!(target_os = "linux") {
            mode
        } else {
            BatchMode::PerDatagram
        };
        Self {
            mode,
            bufs: vec![[0u8; RECV_DATAGRAM_BYTES_MAX]; BATCH_DATAGRAMS_MAX]
                .into_boxed_slice()
                .try_into()
                .expect("the vector has exactly BATCH_DATAGRAMS_MAX buffers"),
            lens: [0; BATCH_DATAGRAMS_MAX],
            addrs: [None; BATCH_DATAGRAMS_MAX],
            n: 0,
            socket_drops: None,
            // SAFETY: all-zero is a valid sockaddr_storage.
            #[cfg(target_os = "linux")]
            names: Box::new(unsafe { std::mem::zeroed() }),
            #[cfg(target_os = "linux")]
            controls: Box::new([[0; CONTROL_WORDS]; BATCH_DATAGRAMS_MAX]),
        }
    }

    /// The mode in use (it changes to per-datagram if the kernel lacks `recvmmsg`).
    pub fn mode(&self) -> BatchMode {
        self.mode
    }

    /// Replaces the batch's contents with the datagrams waiting on `socket` (at most
    /// [`BATCH_DATAGRAMS_MAX`]) and returns how many were read (at least 1).
    ///
    /// # Errors
    /// `WouldBlock` when nothing is waiting; any other socket error (the batch is then
    /// empty). A datagram from an address that is not IPv4 or IPv6 is skipped.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.n = 0;
        if self.mode == BatchMode::Mmsg {
            match self.recv_mmsg(socket) {
                Err(e) if is_enosys(&e) => self.mode = BatchMode::PerDatagram,
                other => return other,
            }
        }
        self.recv_each(socket)
    }

    /// Datagrams of the last [`Self::recv`], in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        (0..self.n).filter_map(move |i| Some((self.addrs[i]?, &self.bufs[i][..self.lens[i]])))
    }

    /// How many datagrams the kernel has dropped at the socket because its receive
    /// buffer was full, since the socket was created (a u32 that wraps), as of the
    /// newest datagram received that carried the count: it needs
    /// [`count_socket_drops`] and batched receiving on Linux, and the kernel attaches
    /// the count only once it is above 0, to datagrams queued after the drops.
    pub fn socket_drops(&self) -> Option<u32> {
        self.socket_drops
    }

    /// Number of datagrams the last [`Self::recv`] read.
    pub fn len(&self) -> usize {
        self.n
    }

    /// `true` if the last [`Self::recv`] read nothing.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    fn recv_each(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        while self.n < BATCH_DATAGRAMS_MAX {
            match socket.recv_from(&mut self.bufs[self.n]) {
                Ok((len, from)) => {
                    self.lens[self.n] = len;
                    self.addrs[self.n] = Some(from);
                    self.n += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if self.n == 0 => return Err(e),
                // The datagrams already read are returned; the error ends the batch (usually
                // it is WouldBlock: the socket is drained).
                Err(_) => break,
            }
        }
        Ok(self.n)
    }
}

/// Datagrams waiting to be sent: filled by [`Self::push_with`], written by [`Self::flush`]
/// with one `sendmmsg` per [`BATCH_DATAGRAMS_MAX`] (Linux). Buffers (75 KiB) allocated once.
pub struct SendBatch {
    mode: BatchMode,
    bufs: Box<[[u8; MTU_BYTES]; BATCH_DATAGRAMS_MAX]>,
    lens: [usize; BATCH_DATAGRAMS_MAX],
    addrs: [Option<SocketAddr>; BATCH_DATAGRAMS_MAX],
    /// Datagrams `sent..queued` are waiting.
    sent: usize,
    queued: usize,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new(BatchMode::best())
    }
}

/// What a [`SendBatch::flush`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushOutcome {
    /// Datagrams handed to the kernel.
    pub sent: usize,
    /// Datagrams dropped because the kernel refused them (e.g. unreachable address).
    pub errors: usize,
    /// The socket buffer was full: the rest waits for the next flush (writable event).
    pub would_block: bool,
}

impl SendBatch {
    /// An empty batch using `mode` (as [`RecvBatch::new`]).
    pub fn new(mode: BatchMode) -> Self {
        let mode = if cfg!(target_os = "linux") {
            mode
        } else {
            BatchMode::PerDatagram
        };
        Self {
            mode,
            bufs: vec![[0u8; MTU_BYTES]; BATCH_DATAGRAMS_MAX]
                .into_boxed_slice()
                .try_into()
                .expect("the vector has exactly BATCH_DATAGRAMS_MAX buffers"),
            lens: [0; BATCH_DATAGRAMS_MAX],
            addrs: [None; BATCH_DATAGRAMS_MAX],
            sent: 0,
            queued: 0,
        }
    }

    /// The mode in use (it changes to per-datagram if the kernel lacks `sendmmsg`).
    pub fn mode(&self) -> BatchMode {
        self.mode
    }

    /// Datagrams waiting.
    pub fn len(&self) -> usize {
        self.queued - self.sent
    }

    /// `true` if nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queued == self.sent
    }

    /// `true` if no datagram can be queued before a [`Self::flush`].
    pub fn is_full(&self) -> bool {
        self.queued == BATCH_DATAGRAMS_MAX
    }

    /// Lets `write` fill the next free MTU-sized buffer; it returns the destination and
    /// length, or `None` (nothing queued). Returns `false` if the batch is full or `write`
    /// produced nothing.
    ///
    /// # Panics
    /// If `write` reports a length above [`MTU_BYTES`] (a bug in the caller).
    pub fn push_with(
        &mut self,
        write: impl FnOnce(&mut [u8]) -> Option<(SocketAddr, usize)>,
    ) -> bool {
        if self.is_full() {
            return false;
        }
        let Some((addr, len)) = write(&mut self.bufs[self.queued][..]) else {
            return false;
        };
        assert!(len <= MTU_BYTES, "datagram longer than its buffer");
        self.lens[self.queued] = len;
        self.addrs[self.queued] = Some(addr);
        self.queued += 1;
        true
    }

    /// Writes the waiting datagrams. Refused datagrams are dropped and counted; on a full
    /// socket buffer the rest stays queued.
    pub fn flush(&mut self, socket: &UdpSocket) -> FlushOutcome {
        let mut outcome = FlushOutcome::default();
        while self.sent < self.queued {
            let result = if self.mode == BatchMode::Mmsg {
                self.send_mmsg(socket)
            } else {
                self.send_one(socket)
            };
            match result {
                Ok(n) => {
                    self.sent += n;
                    outcome.sent += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    outcome.would_block = true;
                    return outcome;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if self.mode == BatchMode::Mmsg && is_enosys(&e) => {
                    self.mode = BatchMode::PerDatagram;
                }
                // The first waiting datagram is the one refused: drop it, go on.
                Err(_) => {
                    self.sent += 1;
                    outcome.errors += 1;
                }
            }
        }
        self.sent = 0;
        self.queued = 0;
        outcome
    }

    fn send_one(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let i = self.sent;
        let addr = self.addrs[i].expect("queued datagrams have an address");
        socket.send_to(&self.bufs[i][..self.lens[i]], addr)?;
        Ok(1)
    }
}

/// `true` if the kernel does not implement the batched calls (old kernels, some sandboxes).
fn is_enosys(e: &io::Error) -> bool {
    #[cfg(target_os = "linux")]
    return e.raw_os_error() == Some(libc::ENOSYS);
    #[cfg(not(target_os = "linux"))]
    return {
        let _ = e;
        false
    };
}

#[cfg(target_os = "linux")]
mod linux {
    //! The `recvmmsg`/`sendmmsg` calls. The message headers point into the batch's own
    //! buffers and are rebuilt on the stack for every call, so nothing self-referential is
    //! stored.

    use std::io;
    use std::mem::{size_of, zeroed};
    use std::os::fd::AsRawFd;
    use std::ptr::null_mut;

    use mio::net::UdpSocket;
    use socket2::SockAddr;

    use super::{RecvBatch, SendBatch, BATCH_DATAGRAMS_MAX};

    impl RecvBatch {
        pub(super) fn recv_mmsg(&mut self, socket: &UdpSocket) -> io::Result<usize> {
            // SAFETY: all-zero is a valid value of these plain C structs.
            let mut iovecs: [libc::iovec; BATCH_DATAGRAMS_MAX] = unsafe { zeroed() };
            let mut msgs: [libc::mmsghdr; BATCH_DATAGRAMS_MAX] = unsafe { zeroed() };
            for (i, buf) in self.bufs.iter_mut().enumerate() {
                iovecs[i].iov_base = buf.as_mut_ptr().cast();
                iovecs[i].iov_len = buf.len();
                let hdr = &mut msgs[i].msg_hdr;
                hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
                hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                hdr.msg_iov = &mut iovecs[i];
                hdr.msg_iovlen = 1;
                hdr.msg_control = self.controls[i].as_mut_ptr().cast();
                hdr.msg_controllen = size_of::<[u64; super::CONTROL_WORDS]>() as _;
            }
            let n = loop {
                // SAFETY: `msgs` holds BATCH_DATAGRAMS_MAX headers, each pointing at one live
                // buffer of `iov_len` bytes and one sockaddr_storage, all outliving the call.
                let r = unsafe {
                    libc::recvmmsg(
                        socket.as_raw_fd(),
                        msgs.as_mut_ptr(),
                        BATCH_DATAGRAMS_MAX as libc::c_uint,
                        libc::MSG_DONTWAIT,
                        null_mut(),
                    )
                };
                if r >= 0 {
                    break r as usize;
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            };
            for (i, msg) in msgs.iter().take(n).enumerate() {
                self.lens[i] = msg.msg_len as usize;
                // SAFETY: the kernel wrote `msg_namelen` bytes of `names[i]`, a valid address.
                let addr = unsafe { SockAddr::new(self.names[i], msg.msg_hdr.msg_namelen) };
                self.addrs[i] = addr.as_socket();
                if let Some(drops) = socket_drops(&msg.msg_hdr) {
                    self.socket_drops = Some(drops);
                }
            }
            self.n = n;
            if n == 0 {
                // recvmmsg does not return 0 with MSG_DONTWAIT, but never report an empty
                // success.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        }
    }

    /// The `SO_RXQ_OVFL` count in a received message's ancillary data, if any.
    fn socket_drops(hdr: &libc::msghdr) -> Option<u32> {
        // SAFETY: `hdr` is a message header the kernel filled in, whose control buffer
        // (`msg_controllen` bytes, 8-aligned) is alive; the CMSG macros stay inside it.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
            while !cmsg.is_null() {
                let c = &*cmsg;
                if c.cmsg_level == libc::SOL_SOCKET
                    && c.cmsg_type == libc::SO_RXQ_OVFL
                    && c.cmsg_len as usize >= libc::CMSG_LEN(size_of::<u32>() as u32) as usize
                {
                    return Some(std::ptr::read_unaligned(
                        libc::CMSG_DATA(cmsg).cast::<u32>(),
                    ));
                }
                cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
            }
        }
        None
    }

    impl SendBatch {
        pub(super) fn send_mmsg(&mut self, socket: &UdpSocket) -> io::Result<usize> {
            let range = self.sent..self.queued;
            let count = range.len();
            let names: [Option<SockAddr>; BATCH_DATAGRAMS_MAX] = std::array::from_fn(|k| {
                let addr = if k < count {
                    self.addrs[self.sent + k]
                } else {
                    None
                };
                addr.map(SockAddr::from)
            });
            // SAFETY: all-zero is a valid value of these plain C structs.
            let mut iovecs: [libc::iovec; BATCH_DATAGRAMS_MAX] = unsafe { zeroed() };
            let mut msgs: [libc::mmsghdr; BATCH_DATAGRAMS_MAX] = unsafe { zeroed() };
            for (k, i) in range.enumerate() {
                let name = names[k].as_ref().expect("queued datagrams have an address");
                iovecs[k].iov_base = self.bufs[i].as_mut_ptr().cast();
                iovecs[k].iov_len = self.lens[i];
                let hdr = &mut msgs[k].msg_hdr;
                hdr.msg_name = name.as_ptr().cast_mut().cast();
                hdr.msg_namelen = name.len();
                hdr.msg_iov = &mut iovecs[k];
                hdr.msg_iovlen = 1;
            }
            loop {
                // SAFETY: the first `count` headers point at live buffers of `iov_len` bytes
                // and at live socket addresses, all outliving the call; the kernel only
                // reads them.
                let r = unsafe {
                    libc::sendmmsg(
                        socket.as_raw_fd(),
                        msgs.as_mut_ptr(),
                        count as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                if r > 0 {
                    return Ok(r as usize);
                }
                let e = io::Error::last_os_error();
                if r == 0 || e.kind() != io::ErrorKind::Interrupted {
                    return Err(if r == 0 {
                        io::ErrorKind::WouldBlock.into()
                    } else {
                        e
                    });
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
impl RecvBatch {
    fn recv_mmsg(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.recv_each(socket)
    }
}

#[cfg(not(target_os = "linux"))]
impl SendBatch {
    fn send_mmsg(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.send_one(socket)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        (a, b)
    }

    /// Receives until `want` datagrams arrived or 5 s passed.
    fn recv_all(
        batch: &mut RecvBatch,
        socket: &UdpSocket,
        want: usize,
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < want && Instant::now() < deadline {
            match batch.recv(socket) {
                Ok(n) => {
                    assert!(n <= BATCH_DATAGRAMS_MAX);
                    assert_eq!(n, batch.len());
                    got.extend(batch.iter().map(|(a, d)| (a, d.to_vec())));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
        got
    }

    /// Datagrams the kernel drops at a full receive buffer are counted: every datagram
    /// sent on loopback is either read or in the count that the next one read carries.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_kernel_drops_at_a_full_receive_buffer_are_counted() {
        let (tx, rx) = pair();
        socket2::SockRef::from(&rx)
            .set_recv_buffer_size(4096)
            .unwrap();
        count_socket_drops(&rx).unwrap();
        let to = rx.local_addr().unwrap();
        let mut recv = RecvBatch::new(BatchMode::Mmsg);
        assert_eq!(recv.socket_drops(), None);
        // Nothing reads while 200 datagrams of 600 bytes arrive: most are dropped.
        let burst = 200;
        for _ in 0..burst {
            tx.send_to(&[7u8; 600], to).unwrap();
        }
        // Loopback delivers inside `send_to`: what was kept is queued by now.
        let mut read = 0;
        while let Ok(n) = recv.recv(&rx) {
            read += n;
        }
        assert!(read < burst / 2, "a 4 KiB buffer held {read} of {burst}");
        // The next datagram, queued after the drops, carries their count.
        tx.send_to(&[8u8; 600], to).unwrap();
        read += recv_all(&mut recv, &rx, 1).len();
        let drops = recv.socket_drops().expect("a drop count") as usize;
        assert_eq!(read + drops, burst + 1, "read {read}, dropped {drops}");
    }

    /// 150 datagrams of distinct sizes and contents (more than two full batches) go out
    /// through a send batch and come back through a receive batch, in order, with the
    /// sender's address, in both modes.
    fn round_trip(mode: BatchMode) {
        let (tx, rx) = pair();
        let to = rx.local_addr().unwrap();
        let from = tx.local_addr().unwrap();
        let mut send = SendBatch::new(mode);
        let mut recv = RecvBatch::new(mode);
        let n_datagrams = 150;
        let mut queued = 0;
        let mut flushes = 0;
        let mut got = Vec::new();
        while queued < n_datagrams {
            let pushed = send.push_with(|buf| {
                let len = 1 + queued % MTU_BYTES;
                buf[..len].fill(queued as u8);
                buf[0] = (queued / 256) as u8;
                Some((to, len))
            });
            if pushed {
                queued += 1;
            }
            if !pushed || send.is_full() || queued == n_datagrams {
                let outcome = send.flush(&tx);
                assert_eq!(outcome.errors, 0);
                assert!(
                    !outcome.would_block,
                    "64 small datagrams fit a socket buffer"
                );
                assert!(send.is_empty());
                flushes += 1;
                got.extend(recv_all(&mut recv, &rx, queued - got.len()));
            }
        }
        assert_eq!(flushes, n_datagrams.div_ceil(BATCH_DATAGRAMS_MAX));
        assert_eq!(got.len(), n_datagrams);
        for (i, (addr, data)) in got.iter().enumerate() {
            assert_eq!(*addr, from);
            assert_eq!(data.len(), 1 + i % MTU_BYTES);
            assert_eq!(data[0], (i / 256) as u8);
            assert!(data[1..].iter().all(|&b| b == i as u8));
        }
        let expected = if cfg!(target_os = "linux") {
            mode
        } else {
            BatchMode::PerDatagram
        };
        assert_eq!((send.mode(), recv.mode()), (expected, expected));
    }

    #[test]
    fn mmsg_round_trip() {
        round_trip(BatchMode::Mmsg);
    }

    #[test]
    fn per_datagram_round_trip() {
        round_trip(BatchMode::PerDatagram);
    }

    #[test]
    fn empty_socket_would_block_and_oversized_datagram_is_seen_whole() {
        for mode in [BatchMode::Mmsg, BatchMode::PerDatagram] {
            let (tx, rx) = pair();
            let mut recv = RecvBatch::new(mode);
            let e = recv.recv(&rx).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
            assert!(recv.is_empty());
            // An oversized datagram arrives longer than the MTU, so the protocol refuses it.
            let big = vec![7u8; MTU_BYTES + 100];
            tx.send_to(&big, rx.local_addr().unwrap()).unwrap();
            let got = recv_all(&mut recv, &rx, 1);
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].1.len(), MTU_BYTES + 100);
        }
    }

    #[test]
    fn refused_datagram_is_counted_and_the_rest_sent() {
        for mode in [BatchMode::Mmsg, BatchMode::PerDatagram] {
            let (tx, rx) = pair();
            let to = rx.local_addr().unwrap();
            let mut send = SendBatch::new(mode);
            // An IPv6 destination on an IPv4 socket is refused by the kernel (EAFNOSUPPORT
            // or EINVAL), between two good datagrams.
            let bad: SocketAddr = "[::1]:9".parse().unwrap();
            for addr in [to, bad, to] {
                assert!(send.push_with(|buf| {
                    buf[0] = 1;
                    Some((addr, 1))
                }));
            }
            assert!(!send.push_with(|_| None));
            assert_eq!(send.len(), 3);
            let outcome = send.flush(&tx);
            assert_eq!(outcome.sent, 2);
            assert_eq!(outcome.errors, 1);
            assert!(send.is_empty());
            let mut recv = RecvBatch::new(mode);
            assert_eq!(recv_all(&mut recv, &rx, 2).len(), 2);
        }
    }
}
