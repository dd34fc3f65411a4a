/*-------------------------------------------------------------------------
 *
 * rules_int.h
 *	  Private to the rules stage (rules.c, rules_validate.c): the columns of
 *	  pg2redis.rules and the check of a rule writer's access.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG2REDIS_RULES_INT_H
#define PG2REDIS_RULES_INT_H

/* Columns of pg2redis.rules. */
#define Anum_rules_id 1
#define Anum_rules_relation 2
#define Anum_rules_op 3
#define Anum_rules_command 4
#define Anum_rules_condition 5
#define Anum_rules_position 6
#define Anum_rules_enabled 7
#define Anum_rules_created_by 8
#define Natts_rules 8

/* What the role that wrote a rule may still do with its relation. */
typedef enum WriterAccess
{
	WRITER_MAY_READ,  /* a superuser, or SELECT and no row security */
	WRITER_DROPPED,	  /* the role no longer exists */
	WRITER_NO_SELECT, /* no SELECT on the relation */
	WRITER_RLS		  /* row-level security of the relation applies */
} WriterAccess;

extern WriterAccess rules_writer_access(Oid relid, Oid roleid);

#endif /* PG2REDIS_RULES_INT_H */
