# policyd agent image: `policyd run` on a slim Debian with libnftables.
# It installs with the same script as the README (scripts/setup.sh), so the two cannot
# drift. The tests build this same file without a container engine (realcluster/images.py:
# debootstrap for the base, then these steps in a chroot) and run the image on a real
# cluster; keep to FROM, WORKDIR, COPY, RUN, ENV, ENTRYPOINT and CMD, which that build knows.
FROM debian:12-slim
WORKDIR /opt/policyd
COPY pyproject.toml README.md ./
COPY policyd ./policyd
COPY scripts/setup.sh ./scripts/setup.sh
RUN apt-get update -qq \
 && scripts/setup.sh \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /root/.cache /usr/share/doc /usr/share/man /usr/share/locale
ENV PATH=/opt/policyd/.venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1
# The chart sets NODE_NAME and POLICYD_* (see charts/policyd/values.yaml).
ENTRYPOINT ["policyd"]
CMD ["run"]
