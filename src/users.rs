//! Users and groups as the config names them: a name, or a numeric id that
//! the user or group database must know. One lookup for `minder check`, for
//! starting a program as `user`/`group`, and for the control socket's
//! `socket_group`, so what `check` accepts is what a start will find.

use nix::unistd::{Gid, Group, Uid, User};

/// The user named `name`, or with the id `name` spells.
pub fn user(name: &str) -> nix::Result<Option<User>> {
    match name.parse::<u32>() {
        Ok(id) => User::from_uid(Uid::from_raw(id)),
        Err(_) => User::from_name(name),
    }
}

/// The group named `name`, or with the id `name` spells.
pub fn group(name: &str) -> nix::Result<Option<Group>> {
    match name.parse::<u32>() {
        Ok(id) => Group::from_gid(Gid::from_raw(id)),
        Err(_) => Group::from_name(name),
    }
}
