# policyd agent image: `policyd run` and only what it uses, on no distribution.
# The build stage installs with the same script as the README (scripts/setup.sh --image), so
# the two cannot drift; scripts/slim-root.sh then copies out Python, the virtualenv, the
# firewall tools and the libraries they link to, and the final stage is that tree alone.
# The tests build this same file without a container engine (realcluster/images.py:
# debootstrap for the base, the steps in a chroot) and run the image on a real cluster;
# keep to FROM [AS], WORKDIR, COPY [--from], RUN, ENV, ENTRYPOINT and CMD, which that build knows.
FROM debian:12-slim AS build
WORKDIR /opt/policyd
COPY pyproject.toml README.md ./
COPY policyd ./policyd
COPY scripts/setup.sh scripts/slim-root.sh ./scripts/
RUN apt-get update -qq \
 && scripts/setup.sh --image \
 && scripts/slim-root.sh /slim

FROM scratch
COPY --from=build /slim /
ENV PATH=/opt/policyd/.venv/bin:/usr/sbin:/usr/bin:/sbin:/bin PYTHONDONTWRITEBYTECODE=1
# The chart sets NODE_NAME and POLICYD_* (see charts/policyd/values.yaml).
ENTRYPOINT ["policyd"]
CMD ["run"]
