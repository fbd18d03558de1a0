//! control-plane client (owner: client helper)
