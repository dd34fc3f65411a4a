/*-------------------------------------------------------------------------
 *
 * render.h
 *	  Column values to text and to JSON, with per-column cached lookups.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_RENDER_H
#define PG2REDIS_RENDER_H

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/guc.h"

/* How a type's values are written in JSON. */
typedef enum ValKind
{
	VK_STRING,	 /* JSON string of the output function's text */
	VK_BOOL,	 /* true/false */
	VK_INTEGER,	 /* JSON number, always */
	VK_FLOAT,	 /* numeric/float: number or string by mode */
	VK_JSON,	 /* json/jsonb: embedded */
	VK_ARRAY,	 /* JSON array of the elements */
	VK_DATETIME, /* date, timestamp(tz): ISO 8601 as to_jsonb */
	VK_COMPOSITE /* JSON object of the attributes, as to_jsonb */
} ValKind;

/*
 * Output functions whose text render_text writes itself, byte for byte as
 * the function writes it (same code, without the call and the copies).
 */
typedef enum TextFast
{
	TF_NONE, /* the output function */
	TF_INT2,
	TF_INT4,
	TF_INT8,
	TF_OID,
	TF_TEXT, /* text, varchar, bpchar: the bytes as stored */
	TF_FLOAT8,
	TF_DATE,
	TF_TIMESTAMP,
	TF_TIMESTAMPTZ,
	TF_JSONB,
	TF_ARRAY /* array_out of one dimension, elements with a writer above */
} TextFast;

/* Everything needed to render values of one type; built once per column. */
typedef struct ColType
{
	Oid				typid;
	ValKind			kind;
	int16			typlen;
	bool			typbyval;
	char			typalign;
	FmgrInfo		outfunc;
	TextFast		fast;	  /* render_text's own writer, if any */
	char			typdelim; /* VK_ARRAY: the elements' delimiter */
	Oid				base;	  /* the type under any domain */
	struct ColType *elem;	  /* VK_ARRAY: the element type */
	int nfields;			/* VK_COMPOSITE: attributes at init, dropped too */
	struct ColType *fields; /* VK_COMPOSITE: their types */
	Oid			   *fieldtypes; /* and type OIDs (InvalidOid: dropped) */
} ColType;

extern void render_coltype_init(ColType *ct, Oid typid, MemoryContext cxt);
extern const char *render_text(const ColType *ct, Datum value, int *len);
extern void		   render_json(const ColType *ct, Datum value, bool isnull,
							   StringInfo out);
extern void		   render_json_string(StringInfo out, const char *s, int len);
extern bool		   render_is_json_number(const char *s);
extern void		   render_apply_settings(GucContext context, GucSource source,
										 GucAction action);
extern int		   render_push_settings(void);
extern void		   render_pop_settings(int level);
extern bool		   render_is_number(const char *s, int len);
extern bool		   render_parse_int64(const char *s, int len, int64 *out);

#endif /* PG2REDIS_RENDER_H */
