//! Parsing iptables rule specs and restore input.

use std::net::SocketAddr;

use ipnetwork::IpNetwork;

use super::rule::{Match, Rule, Target};

/// A rule or restore line kproxy's parser does not understand.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}: {text}")]
pub struct ParseError {
    /// 1-based line number in the restore text (0 for a single spec).
    pub line: usize,
    /// What is wrong.
    pub reason: String,
    /// The offending line.
    pub text: String,
}

/// Splits a line into words, honouring double quotes (`"a b"` is one word, without the quotes).
pub(crate) fn tokenize(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            c => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    if in_word {
        words.push(current);
    }
    Ok(words)
}

fn parse_net(s: &str) -> Result<IpNetwork, String> {
    let net: IpNetwork = s.parse().map_err(|_| format!("bad address {s:?}"))?;
    IpNetwork::new(net.network(), net.prefix()).map_err(|e| e.to_string())
}

fn parse_u32(s: &str) -> Result<u32, String> {
    let v = if let Some(hex) = s.strip_prefix("0x") {
        u32::from_str_radix(hex, 16)
    } else {
        s.parse()
    };
    v.map_err(|_| format!("bad number {s:?}"))
}

fn parse_value_mask(s: &str) -> Result<(u32, u32), String> {
    match s.split_once('/') {
        Some((v, m)) => Ok((parse_u32(v)?, parse_u32(m)?)),
        None => Ok((parse_u32(s)?, u32::MAX)),
    }
}

/// Parses a rule spec (the words after `-A CHAIN`).
pub(crate) fn parse_spec(words: &[String]) -> Result<Rule, String> {
    let mut matches = Vec::new();
    let mut target = Target::None;
    let mut negate = false;
    let mut i = 0;
    let next = |i: &mut usize| -> Result<&str, String> {
        *i += 1;
        words
            .get(*i)
            .map(String::as_str)
            .ok_or_else(|| format!("{} needs a value", words[*i - 1]))
    };
    while i < words.len() {
        let w = words[i].as_str();
        match w {
            "!" => {
                negate = true;
                i += 1;
                continue;
            }
            "-m" => {
                let module = next(&mut i)?;
                match module {
                    "tcp" | "udp" | "sctp" => matches.push(Match::Module(module.to_owned())),
                    "comment" | "addrtype" | "statistic" | "recent" | "mark" | "conntrack" => {}
                    other => return Err(format!("unknown match module {other:?}")),
                }
            }
            "-p" => matches.push(Match::Protocol {
                negated: negate,
                protocol: next(&mut i)?.to_owned(),
            }),
            "-s" | "--src" | "--source" => matches.push(Match::Source {
                negated: negate,
                net: parse_net(next(&mut i)?)?,
            }),
            "-d" | "--dst" | "--destination" => matches.push(Match::Destination {
                negated: negate,
                net: parse_net(next(&mut i)?)?,
            }),
            "--comment" => matches.push(Match::Comment(next(&mut i)?.to_owned())),
            "--dport" => {
                let p = next(&mut i)?;
                matches.push(Match::DestinationPort {
                    negated: negate,
                    port: p.parse().map_err(|_| format!("bad port {p:?}"))?,
                })
            }
            "--src-type" | "--dst-type" => {
                let kind = next(&mut i)?;
                if kind != "LOCAL" {
                    return Err(format!("unsupported address type {kind:?}"));
                }
                matches.push(if w == "--src-type" {
                    Match::SourceLocal { negated: negate }
                } else {
                    Match::DestinationLocal { negated: negate }
                });
            }
            "--mode" => {
                let mode = next(&mut i)?;
                if mode != "random" {
                    return Err(format!("unsupported statistic mode {mode:?}"));
                }
            }
            "--probability" => matches.push(Match::Probability(next(&mut i)?.to_owned())),
            "--name" => {
                let name = next(&mut i)?.to_owned();
                let action = next(&mut i)?;
                match action {
                    "--set" => matches.push(Match::RecentSet { name }),
                    "--rcheck" => {
                        let mut seconds = None;
                        while let Some(opt) = words.get(i + 1) {
                            match opt.as_str() {
                                "--seconds" => {
                                    i += 1;
                                    let s = next(&mut i)?;
                                    seconds =
                                        Some(s.parse().map_err(|_| format!("bad seconds {s:?}"))?);
                                }
                                "--reap" => i += 1,
                                _ => break,
                            }
                        }
                        matches.push(Match::RecentCheck { name, seconds });
                    }
                    other => return Err(format!("unsupported recent action {other:?}")),
                }
            }
            "--mark" => {
                let (value, mask) = parse_value_mask(next(&mut i)?)?;
                matches.push(Match::Mark {
                    negated: negate,
                    value,
                    mask,
                });
            }
            "--ctstate" => matches.push(Match::ConnState {
                negated: negate,
                states: next(&mut i)?.split(',').map(str::to_owned).collect(),
            }),
            "-j" => {
                let t = next(&mut i)?;
                target = match t {
                    "ACCEPT" => Target::Accept,
                    "DROP" => Target::Drop,
                    "REJECT" => Target::Reject,
                    "RETURN" => Target::Return,
                    "MASQUERADE" => Target::Masquerade {
                        random_fully: false,
                    },
                    "DNAT" | "MARK" | "REDIRECT" => Target::None, // completed by the options that follow
                    chain => Target::Jump(chain.to_owned()),
                };
                if t == "DNAT" || t == "MARK" || t == "REDIRECT" {
                    let opt = next(&mut i)?;
                    let value = next(&mut i)?;
                    target = match opt {
                        "--to-destination" => Target::Dnat(
                            value
                                .parse::<SocketAddr>()
                                .map_err(|_| format!("bad DNAT destination {value:?}"))?,
                        ),
                        "--to-ports" if t == "REDIRECT" => Target::Redirect(
                            value
                                .parse::<u16>()
                                .map_err(|_| format!("bad REDIRECT port {value:?}"))?,
                        ),
                        "--or-mark" => Target::MarkOr(parse_u32(value)?),
                        "--xor-mark" => Target::MarkXor(parse_u32(value)?),
                        "--set-xmark" => {
                            let (value, mask) = parse_value_mask(value)?;
                            Target::MarkSet { value, mask }
                        }
                        other => return Err(format!("unsupported {t} option {other:?}")),
                    };
                }
            }
            "--random-fully" => match &mut target {
                Target::Masquerade { random_fully } => *random_fully = true,
                _ => return Err("--random-fully without MASQUERADE".into()),
            },
            other => return Err(format!("unsupported option {other:?}")),
        }
        negate = false;
        i += 1;
    }
    if negate {
        return Err("dangling '!'".into());
    }
    Ok(Rule { matches, target })
}
