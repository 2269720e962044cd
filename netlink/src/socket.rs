//! A blocking netlink socket that sends one request and collects its answers: the request/reply
//! loop every netlink family here shares (dump until `NLMSG_DONE`, or wait for the ACK).

use std::io;

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_sys::Socket;

/// A netlink socket of one protocol, bound to an automatic port, in the caller's network
/// namespace.
#[derive(Debug)]
pub struct NetlinkSocket {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
    send_buffer: usize,
}

/// `MSG_DONTWAIT`.
fn libc_dontwait() -> i32 {
    nix::sys::socket::MsgFlags::MSG_DONTWAIT.bits()
}

/// What went wrong talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// A socket call failed, or the kernel answered with an error code.
    #[error("{operation}: {source}")]
    Io {
        /// The call or request.
        operation: String,
        /// The error (the kernel's errno for a NACK).
        #[source]
        source: io::Error,
    },
    /// The kernel's answer did not parse.
    #[error("{operation}: malformed reply: {reason}")]
    Malformed {
        /// The request.
        operation: String,
        /// Why.
        reason: String,
    },
}

impl SocketError {
    /// The kernel's errno, if the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            SocketError::Io { source, .. } => source.raw_os_error(),
            SocketError::Malformed { .. } => None,
        }
    }
}

impl NetlinkSocket {
    /// Opens a socket of `protocol` (`netlink_sys::protocols::NETLINK_*`).
    pub fn open(protocol: isize) -> Result<Self, SocketError> {
        let io = |operation: &str| {
            let operation = operation.to_owned();
            move |source| SocketError::Io { operation, source }
        };
        let mut socket = Socket::new(protocol).map_err(io("netlink socket"))?;
        socket.bind_auto().map_err(io("netlink bind"))?;
        Ok(Self {
            socket,
            seq: 0,
            buf: vec![0; 1 << 16],
            send_buffer: 0,
        })
    }

    /// Sends `message` (its sequence number set here) and returns every inner message of the
    /// answer: for a dump, the messages until `NLMSG_DONE`; for a request with `NLM_F_ACK`, none
    /// (an ACK) or the kernel's error. `operation` names the request in errors.
    pub fn request<I>(
        &mut self,
        message: NetlinkMessage<I>,
        operation: &str,
    ) -> Result<Vec<I>, SocketError>
    where
        I: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
    {
        let mut answers = Vec::new();
        self.request_each(message, operation, |m| answers.push(m))?;
        Ok(answers)
    }

    /// As [`request`](Self::request), handing each inner message of the answer to `each` as it
    /// is read instead of collecting them: a dump of a million entries holds one receive buffer,
    /// not a million messages.
    pub fn request_each<I>(
        &mut self,
        mut message: NetlinkMessage<I>,
        operation: &str,
        mut each: impl FnMut(I),
    ) -> Result<(), SocketError>
    where
        I: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        message.header.sequence_number = self.seq;
        message.finalize();
        let mut out = vec![0; message.buffer_len()];
        message.serialize(&mut out);
        let dump = message.header.flags & netlink_packet_core::NLM_F_DUMP
            == netlink_packet_core::NLM_F_DUMP;
        self.socket
            .send(&out, 0)
            .map_err(|source| SocketError::Io {
                operation: format!("{operation}: send"),
                source,
            })?;
        let seq = self.seq;
        loop {
            let finished = self.recv_datagram::<I>(operation, |reply| {
                if reply.header.sequence_number != seq {
                    return Ok(false); // a late answer to an earlier request
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => Ok(true),
                    NetlinkPayload::Error(e) => match e.code {
                        None if !dump => Ok(true),
                        None => Ok(false),
                        Some(_) => Err(SocketError::Io {
                            operation: operation.to_owned(),
                            source: e.to_io(),
                        }),
                    },
                    NetlinkPayload::InnerMessage(inner) => {
                        each(inner);
                        Ok(false)
                    }
                    _ => Ok(false),
                }
            })?;
            if finished {
                return Ok(());
            }
        }
    }

    /// Reserves `count` consecutive sequence numbers and returns the first: a caller that
    /// writes a whole batch of messages itself numbers them with these.
    pub fn reserve_sequence(&mut self, count: u32) -> u32 {
        let first = self.seq.wrapping_add(1);
        self.seq = self.seq.wrapping_add(count);
        first
    }

    /// Sends one datagram as it is (a batch the caller serialized), making the socket's send
    /// buffer large enough first (`SO_SNDBUFFORCE`, root): the kernel takes a datagram only
    /// whole, and an nf_tables transaction must be one datagram.
    pub fn send_datagram(&mut self, datagram: &[u8], operation: &str) -> Result<(), SocketError> {
        use nix::sys::socket::{setsockopt, sockopt};
        if datagram.len() + 4096 > self.send_buffer {
            let size = (datagram.len() + 65536).next_power_of_two();
            setsockopt(&self.socket, sockopt::SndBufForce, &size).map_err(|e| SocketError::Io {
                operation: format!("{operation}: SO_SNDBUFFORCE {size}"),
                source: io::Error::from(e),
            })?;
            self.send_buffer = size;
        }
        self.send_raw(datagram, operation)
    }

    /// One `send` of a datagram, its error naming `operation`.
    fn send_raw(&mut self, datagram: &[u8], operation: &str) -> Result<(), SocketError> {
        self.socket
            .send(datagram, 0)
            .map_err(|source| SocketError::Io {
                operation: format!("{operation}: send"),
                source,
            })?;
        Ok(())
    }

    /// Reads what is already queued on the socket without waiting, handing each message to
    /// `each`; returns when the queue is empty. The kernel handles a datagram sent to it before
    /// `send` returns, so every answer to it is queued by then.
    pub fn drain_queued<I>(
        &mut self,
        operation: &str,
        mut each: impl FnMut(NetlinkMessage<I>) -> Result<(), SocketError>,
    ) -> Result<(), SocketError>
    where
        I: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
    {
        loop {
            match self.recv_datagram_flags::<I>(operation, libc_dontwait(), |m| {
                each(m)?;
                Ok(false)
            }) {
                Ok(_) => {}
                Err(SocketError::Io { source, .. })
                    if source.kind() == io::ErrorKind::WouldBlock =>
                {
                    return Ok(())
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Receives one datagram and hands each netlink message in it to `each`, which says whether
    /// the exchange is finished; returns whether one did. Messages after a finishing one in the
    /// same datagram are still handed over (they answer something else, or nothing).
    fn recv_datagram<I>(
        &mut self,
        operation: &str,
        each: impl FnMut(NetlinkMessage<I>) -> Result<bool, SocketError>,
    ) -> Result<bool, SocketError>
    where
        I: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
    {
        self.recv_datagram_flags(operation, 0, each)
    }

    fn recv_datagram_flags<I>(
        &mut self,
        operation: &str,
        flags: i32,
        mut each: impl FnMut(NetlinkMessage<I>) -> Result<bool, SocketError>,
    ) -> Result<bool, SocketError>
    where
        I: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
    {
        let n = self
            .socket
            .recv(&mut &mut self.buf[..], flags)
            .map_err(|source| SocketError::Io {
                operation: format!("{operation}: recv"),
                source,
            })?;
        let mut offset = 0;
        let mut finished = false;
        while offset < n {
            let reply = NetlinkMessage::<I>::deserialize(&self.buf[offset..n]).map_err(|e| {
                SocketError::Malformed {
                    operation: operation.to_owned(),
                    reason: e.to_string(),
                }
            })?;
            let len = reply.header.length as usize;
            if len == 0 {
                return Err(SocketError::Malformed {
                    operation: operation.to_owned(),
                    reason: "zero-length message".into(),
                });
            }
            offset += (len + 3) & !3;
            finished |= each(reply)?;
        }
        Ok(finished)
    }

    /// Sends `messages` (each with `NLM_F_ACK`) pipelined: as many as fit in one datagram of about
    /// 32 KiB go out in one `sendmsg`, then their acknowledgements are read, and so on. The kernel
    /// handles the messages of a datagram one after another and acknowledges each, so a batch of
    /// a thousand requests costs a few dozen system calls instead of two thousand. Returns one
    /// result per message, in order: `None` when the kernel accepted it, its error otherwise (one
    /// refused message does not stop the others).
    pub fn send_acked<I>(
        &mut self,
        messages: impl IntoIterator<Item = NetlinkMessage<I>>,
        operation: &str,
    ) -> Result<Vec<Option<io::Error>>, SocketError>
    where
        I: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
    {
        const DATAGRAM: usize = 32 * 1024;
        let mut results: Vec<Option<io::Error>> = Vec::new();
        let mut out: Vec<u8> = Vec::with_capacity(DATAGRAM + 1024);
        let mut pending = 0usize;
        let mut first_seq = self.seq.wrapping_add(1);
        // Messages are built by the iterator as they are needed and dropped once serialized:
        // a batch of 200,000 requests holds one datagram, not 200,000 messages.
        for mut message in messages {
            self.seq = self.seq.wrapping_add(1);
            message.header.sequence_number = self.seq;
            message.header.flags |= netlink_packet_core::NLM_F_ACK;
            message.finalize();
            let at = out.len();
            out.resize(at + ((message.buffer_len() + 3) & !3), 0);
            message.serialize(&mut out[at..]);
            pending += 1;
            if out.len() >= DATAGRAM {
                self.flush_acked::<I>(&out, first_seq, pending, operation, &mut results)?;
                out.clear();
                pending = 0;
                first_seq = self.seq.wrapping_add(1);
            }
        }
        if pending > 0 {
            self.flush_acked::<I>(&out, first_seq, pending, operation, &mut results)?;
        }
        Ok(results)
    }

    /// Sends one datagram of `count` requests and reads their acknowledgements.
    fn flush_acked<I>(
        &mut self,
        datagram: &[u8],
        first_seq: u32,
        count: usize,
        operation: &str,
        results: &mut Vec<Option<io::Error>>,
    ) -> Result<(), SocketError>
    where
        I: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
    {
        self.send_raw(datagram, operation)?;
        self.collect_acks::<I>(first_seq, count, operation, results)
    }

    /// Reads the acknowledgements of `count` messages numbered from `first_seq`, appending one
    /// result each to `results` in sequence order.
    fn collect_acks<I>(
        &mut self,
        first_seq: u32,
        count: usize,
        operation: &str,
        results: &mut Vec<Option<io::Error>>,
    ) -> Result<(), SocketError>
    where
        I: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
    {
        let base = results.len();
        results.extend((0..count).map(|_| None));
        let mut answered = vec![false; count];
        let mut remaining = count;
        while remaining > 0 {
            self.recv_datagram::<I>(operation, |reply| {
                let index = reply.header.sequence_number.wrapping_sub(first_seq) as usize;
                if index >= count || answered[index] {
                    return Ok(false); // an answer to something else
                }
                if let NetlinkPayload::Error(e) = reply.payload {
                    answered[index] = true;
                    remaining -= 1;
                    if e.code.is_some() {
                        results[base + index] = Some(e.to_io());
                    }
                }
                Ok(false)
            })?;
        }
        Ok(())
    }
}
