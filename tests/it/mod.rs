mod binary;
mod check;
mod deploy;
mod engines;
mod grants;
mod health;
mod reload;
mod support;
