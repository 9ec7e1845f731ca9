# infera container image.
#
#   docker build -t infera .
#   docker run -d --name infera -p 8080:8080 -v infera-data:/var/lib/infera infera
#   docker exec infera cat /var/lib/infera/admin.key      # the first start's admin key
#
# Build stage: compile with meson and train the example models with infera's own trainer.
# Runtime stage: debian:bookworm-slim + the four runtime libraries + the binary + the models,
# running as uid 10001. Configuration is INFERA_* environment variables (every `infera serve`
# flag has one; see `infera serve --help`). The data directory is the volume /var/lib/infera;
# models are read from /models (mount a model repository over it to serve your own).
#
# No Docker engine runs in CI: deploy/container/test-chroot executes this file's instructions
# in debootstrap-built chroots and smoke-tests the result. Keep to the instructions it
# understands (FROM/ARG/ENV/WORKDIR/RUN/COPY/USER/...; RUN in shell form).

FROM debian:bookworm-slim AS build
COPY deploy/container/install-packages /usr/local/sbin/infera-install-packages
RUN infera-install-packages build
WORKDIR /src
COPY . .
# The project's default build type (debugoptimized: -O2, warnings as errors), stripped on
# install. Training runs single-threaded BLAS, as the server does.
RUN meson setup /tmp/build >/dev/null \
    && ninja -C /tmp/build infera \
    && install -D -m 0755 -s /tmp/build/infera /out/usr/local/bin/infera \
    && OPENBLAS_NUM_THREADS=1 examples/make_models /out/usr/local/bin/infera /out/models \
    && /out/usr/local/bin/infera version

FROM debian:bookworm-slim AS runtime
COPY deploy/container/install-packages /usr/local/sbin/infera-install-packages
COPY deploy/container/healthcheck /usr/local/bin/infera-healthcheck
RUN infera-install-packages runtime \
    && rm /usr/local/sbin/infera-install-packages \
    && groupadd --system --gid 10001 infera \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/infera --no-create-home \
        --shell /usr/sbin/nologin infera \
    && install -d -m 0700 -o 10001 -g 10001 /var/lib/infera
COPY --from=build /out/usr/local/bin/infera /usr/local/bin/infera
COPY --from=build /out/models /models
# 0.0.0.0 inside the container only: publishing the port (-p) decides who can reach it.
ENV INFERA_LISTEN=0.0.0.0:8080 \
    INFERA_DATA_DIR=/var/lib/infera \
    INFERA_MODELS=/models \
    OPENBLAS_NUM_THREADS=1
VOLUME ["/var/lib/infera"]
EXPOSE 8080
USER 10001:10001
WORKDIR /var/lib/infera
# SIGTERM drains: readiness 503 at once, the listener closes --drain-delay seconds later,
# requests in flight finish, exit 0. Give `docker stop -t` more than drain-delay + drain-timeout.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/infera-healthcheck"]
ENTRYPOINT ["/usr/local/bin/infera"]
CMD ["serve"]
