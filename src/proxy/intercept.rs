//! iptables interception (owner: intercept helper)
