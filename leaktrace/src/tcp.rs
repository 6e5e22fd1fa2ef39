//! TCP states by name, as `ss` and the kernel's `tcp_states.h` spell them.
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    /// A value this build does not know (a newer kernel).
    Unknown,
}

impl TcpState {
    pub fn from_kernel(value: u32) -> Self {
        use leaktrace_common::tcp_state as k;
        match value {
            k::ESTABLISHED => Self::Established,
            k::SYN_SENT => Self::SynSent,
            k::SYN_RECV => Self::SynRecv,
            k::FIN_WAIT1 => Self::FinWait1,
            k::FIN_WAIT2 => Self::FinWait2,
            k::TIME_WAIT => Self::TimeWait,
            k::CLOSE => Self::Close,
            k::CLOSE_WAIT => Self::CloseWait,
            k::LAST_ACK => Self::LastAck,
            k::LISTEN => Self::Listen,
            k::CLOSING => Self::Closing,
            k::NEW_SYN_RECV => Self::NewSynRecv,
            _ => Self::Unknown,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW_SYN_RECV",
            Self::Unknown => "UNKNOWN",
        }
    }
}

impl std::fmt::Display for TcpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_serde_spelling() {
        for value in 1..=12 {
            let state = TcpState::from_kernel(value);
            assert_ne!(state, TcpState::Unknown, "kernel state {value}");
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.name()));
        }
        assert_eq!(TcpState::from_kernel(99), TcpState::Unknown);
    }
}
