mod binary;
mod check;
mod health;
mod reload;
mod support;
