# faultline: a release build, then a slim Debian runtime running as a
# non-root user. The image carries `faultline` (the proxy, ctl, the demo
# upstreams) and `regional_failover` (the compose stack's load generator).
#
#   docker build -t faultline .
#   docker run --rm -p 8080:8080 -v "$PWD/faultline.toml:/etc/faultline/faultline.toml:ro" faultline

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY rules rules
COPY examples examples
# No BuildKit cache mounts, so the classic builder and docker-compose v1 work too.
RUN cargo build --release --locked --bin faultline --example regional_failover \
    && install -D target/release/faultline /out/faultline \
    && install -D target/release/examples/regional_failover /out/regional_failover

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin faultline
COPY --from=build /out/faultline /out/regional_failover /usr/local/bin/
COPY rules /etc/faultline/rules
COPY examples/compose/faultline.toml /etc/faultline/faultline.toml
USER faultline
WORKDIR /etc/faultline
EXPOSE 8080 9000
ENTRYPOINT ["faultline"]
CMD ["run", "-c", "/etc/faultline/faultline.toml"]
