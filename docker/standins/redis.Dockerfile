# Stand-in for docker.io/library/redis:7 where Docker Hub cannot be reached (built by
# scripts/compose-engine.sh on a debootstrapped bookworm; never published). Debian's Redis 7,
# reachable from other containers like the real image: that one is built with protected mode
# off, Debian's binary is not, so the entrypoint turns it off for `redis-server` commands.
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server redis-tools \
 && rm -rf /var/lib/apt/lists/* && mkdir -p /data
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["sh", "/usr/local/bin/docker-entrypoint.sh"]
CMD ["redis-server"]
