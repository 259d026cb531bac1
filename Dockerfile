# Slipway as a container: run it with the host's network (it answers DHCP and PXE on the
# machines' L2 segment), see docs/operator-guide.md:
#
#   podman run -d --name slipway --net=host \
#     --cap-add NET_ADMIN --cap-add NET_RAW --cap-add NET_BIND_SERVICE \
#     -v "$PWD/cluster-desc.yaml:/etc/slipway/cluster-desc.yaml:ro" \
#     -v "$PWD/images:/srv/slipway/images:ro" \
#     -v slipway-state:/var/lib/slipway \
#     slipway:latest
#
# Build stage: the release binary, with the lock file as committed.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

# Runtime stage: Debian slim with the iPXE binaries (undionly.kpxe, ipxe.efi, snponly.efi in
# /usr/lib/ipxe, served when images/ipxe has none) and nothing else.
FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ipxe ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/slipway /usr/local/bin/slipway
ENV SLIPWAY_CONFIG=/etc/slipway/cluster-desc.yaml \
    SLIPWAY_STATE_DIR=/var/lib/slipway \
    SLIPWAY_IMAGES_DIR=/srv/slipway/images \
    SLIPWAY_LOG_FORMAT=json
VOLUME ["/var/lib/slipway"]
ENTRYPOINT ["/usr/local/bin/slipway"]
CMD ["serve"]
