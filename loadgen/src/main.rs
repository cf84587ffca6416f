//! The `gatehouse-loadgen` command: parse arguments, run the storm (or the
//! message exchange), print the report.

use clap::Parser;
use gatehouse_loadgen::{storm, Args};

fn main() {
    let args = Args::parse();
    // One thread needs no work-stealing runtime: a current-thread one is
    // cheaper per task switch, which is most of what the generator does.
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    match runtime.block_on(storm(&args)) {
        Ok(report) => println!("{report}"),
        Err(error) => {
            eprintln!("gatehouse-loadgen: {error}");
            std::process::exit(2);
        }
    }
}
