# pg2redis — PGXS build.  `make && make install`, then `make installcheck`
# (pg_regress on a temporary instance it creates itself; see test/pg2redis.conf).

EXTENSION    = pg2redis
EXTVERSION   = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" pg2redis.control)
MODULE_big   = pg2redis
OBJS         = $(patsubst %.c,%.o,$(wildcard src/*.c src/*/*.c))
DATA         = $(wildcard pg2redis--*.sql)

LIBS_PC      = hiredis jansson openssl
PG_CPPFLAGS  = -I$(srcdir)/include $(shell pkg-config --cflags $(LIBS_PC)) \
               -DPG2R_EXTVERSION='"$(EXTVERSION)"'
PG_CFLAGS    = -Wextra -Wno-unused-parameter
SHLIB_LINK   = $(shell pkg-config --libs $(LIBS_PC)) -lanl  # getaddrinfo_a (in libc since glibc 2.34)
# Export only what the server looks up (exports.map, checked by test/exports.sh).
SHLIB_LINK  += -Wl,--version-script=$(srcdir)/exports.map

REGRESS      = $(sort $(notdir $(basename $(wildcard sql/*.sql))))
REGRESS_OPTS = --temp-config=$(srcdir)/test/pg2redis.conf \
               --temp-instance=$(CURDIR)/tmp_check \
               --inputdir=$(srcdir) --load-extension=plpgsql
TAP_TESTS    = 1

EXTRA_CLEAN  = tmp_check results regression.diffs regression.out log src/*/*.bc

PG_CONFIG   ?= pg_config
PGXS        := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# A release archive of the committed tree: make dist.
dist:
	git archive --format zip --prefix=$(EXTENSION)-$(EXTVERSION)/ -o $(EXTENSION)-$(EXTVERSION).zip HEAD

.PHONY: dist

# Compiled objects depend on every project header.
$(OBJS): $(wildcard include/pg2redis/*.h src/*/*.h)
# The library is linked again when its export list changes.
$(shlib): exports.map
# The worker checks the installed extension against the control file's version.
src/decode/worker.o: pg2redis.control
