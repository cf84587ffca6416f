//! The `gatehouse-loadgen` command: parse arguments, run the storm, print
//! the report.

use clap::Parser;
use gatehouse_loadgen::{storm, Args};

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(storm(&args)) {
        Ok(report) => println!("{report}"),
        Err(error) => {
            eprintln!("gatehouse-loadgen: {error}");
            std::process::exit(2);
        }
    }
}
